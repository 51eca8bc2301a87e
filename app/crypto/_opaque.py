"""OPAQUE (RFC 9807) through opaque-ke-py, the binding of the audited `opaque-ke`.

Only this module imports the binding. Failures come out as `OpaqueError`
(malformed input) or `OpaqueLoginFailed` (wrong password or tampered messages),
never as the binding's ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import opaque_ke_py as _opaque

from ._errors import CryptoError


class OpaqueError(CryptoError):
    """An OPAQUE message or stored record is malformed."""


class OpaqueLoginFailed(CryptoError):
    """The password was wrong, or a login message was altered."""


def _call(function: object, *args: object) -> object:
    try:
        return function(*args)  # type: ignore[operator]
    except ValueError as error:
        if "InvalidLogin" in str(error):
            raise OpaqueLoginFailed("the password is not correct") from None
        raise OpaqueError("malformed OPAQUE message") from None


class OpaqueServerSetup:
    """The server's OPAQUE key pair and OPRF seed; secret."""

    __slots__ = ("_setup",)

    def __init__(self, setup: _opaque.ServerSetupData) -> None:
        self._setup = setup

    @staticmethod
    def generate() -> OpaqueServerSetup:
        return OpaqueServerSetup(_opaque.server_setup())

    @staticmethod
    def from_bytes(data: bytes) -> OpaqueServerSetup:
        return OpaqueServerSetup(_call(_opaque.ServerSetupData.from_bytes, data))  # type: ignore[arg-type]

    def to_bytes(self) -> bytes:
        return bytes(self._setup.to_bytes())

    def __repr__(self) -> str:
        return "OpaqueServerSetup(<secret>)"


@dataclass(frozen=True)
class ClientStart:
    message: bytes
    state: bytes

    def __repr__(self) -> str:
        return "ClientStart(<state hidden>)"


def client_registration_start(password: bytes) -> ClientStart:
    started = _call(_opaque.client_registration_start, password)
    return ClientStart(bytes(started.get_message()), bytes(started.get_state()))  # type: ignore[attr-defined]


def server_registration_start(
    setup: OpaqueServerSetup, request: bytes, credential_id: bytes
) -> bytes:
    response = _call(_opaque.server_registration_start, setup._setup, request, credential_id)
    return bytes(response.get_message())  # type: ignore[attr-defined]


def client_registration_finish(
    password: bytes, state: bytes, response: bytes
) -> tuple[bytes, bytes]:
    """Returns (registration upload, export key)."""
    finished = _call(_opaque.client_registration_finish, password, state, response)
    return bytes(finished.get_message()), bytes(finished.get_export_key())  # type: ignore[attr-defined]


def server_registration_finish(upload: bytes) -> bytes:
    """Returns the password file to store."""
    finished = _call(_opaque.server_registration_finish, upload)
    return bytes(finished.get_password_file())  # type: ignore[attr-defined]


def client_login_start(password: bytes) -> ClientStart:
    started = _call(_opaque.client_login_start, password)
    return ClientStart(bytes(started.get_message()), bytes(started.get_state()))  # type: ignore[attr-defined]


def server_login_start(
    setup: OpaqueServerSetup, password_file: bytes, request: bytes, credential_id: bytes
) -> tuple[bytes, bytes]:
    """Returns (credential response, server state)."""
    started = _call(_opaque.server_login_start, setup._setup, password_file, request, credential_id)
    return bytes(started.get_message()), bytes(started.get_state())  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ClientLogin:
    """A finished client login: the message for the server and two secret keys.

    The session key is shared with the server; the export key is known to the
    client alone (RFC 9807 section 6.4.4) and is the same at every login.
    """

    finalization: bytes
    session_key: bytes
    export_key: bytes

    def __repr__(self) -> str:
        return "ClientLogin(<secret>)"


def client_login_finish(password: bytes, state: bytes, response: bytes) -> ClientLogin:
    """Raises OpaqueLoginFailed for a wrong password or an altered response."""
    finished: Any = _call(_opaque.client_login_finish, password, state, response)
    return ClientLogin(
        bytes(finished.get_message()),
        bytes(finished.get_session_key()),
        bytes(finished.get_export_key()),
    )


def server_login_finish(state: bytes, finalization: bytes) -> bytes:
    """Returns the session key; raises OpaqueLoginFailed."""
    finished = _call(_opaque.server_login_finish, state, finalization)
    return bytes(finished.get_session_key())  # type: ignore[attr-defined]
