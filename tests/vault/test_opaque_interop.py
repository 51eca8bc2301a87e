"""OPAQUE: our binding (opaque-ke-py) against opaquepy, a binding we did not write.

Both wrap opaque-ke with ristretto255, 3DH and Argon2id; messages cross between
them unchanged (opaquepy speaks base64url), in both directions, and a wrong
password fails on either side.
"""

from __future__ import annotations

import base64

import opaquepy
import pytest
from opaquepy import lib

from app.crypto import (
    OpaqueLoginFailed,
    OpaqueServerSetup,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    server_login_finish,
    server_login_start,
    server_registration_finish,
    server_registration_start,
)

PASSWORD = "correct horse battery"


def _dec(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _enc(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_our_client_with_their_server() -> None:
    setup = opaquepy.create_setup()
    secret = PASSWORD.encode()
    started = client_registration_start(secret)
    response = opaquepy.register(setup, _enc(started.message), "record")
    upload, export_key = client_registration_finish(secret, started.state, _dec(response))
    password_file = opaquepy.register_finish(_enc(upload))

    login = client_login_start(secret)
    answer, state = opaquepy.login(setup, password_file, _enc(login.message), "record")
    finished = client_login_finish(secret, login.state, _dec(answer))
    assert _dec(opaquepy.login_finish(_enc(finished.finalization), state)) == finished.session_key
    # The export key (which wraps backup keys) is the one registration produced.
    assert finished.export_key == export_key

    wrong = client_login_start(b"wrong password")
    answer, _state = opaquepy.login(setup, password_file, _enc(wrong.message), "record")
    with pytest.raises(OpaqueLoginFailed):
        client_login_finish(b"wrong password", wrong.state, _dec(answer))


def test_their_client_with_our_server() -> None:
    setup = OpaqueServerSetup.generate()
    request, state = lib.register_client(PASSWORD)
    response = server_registration_start(setup, _dec(request), b"record")
    upload = lib.register_client_finish(state, PASSWORD, _enc(response))
    password_file = server_registration_finish(_dec(upload))

    request, state = lib.login_client(PASSWORD)
    answer, server_state = server_login_start(setup, password_file, _dec(request), b"record")
    finalization, session_key = lib.login_client_finish(state, PASSWORD, _enc(answer))
    assert server_login_finish(server_state, _dec(finalization)) == _dec(session_key)

    request, state = lib.login_client("wrong password")
    answer, _server_state = server_login_start(setup, password_file, _dec(request), b"record")
    with pytest.raises(Exception):  # noqa: B017 - opaquepy raises its own error type
        lib.login_client_finish(state, "wrong password", _enc(answer))
