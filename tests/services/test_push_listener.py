"""Stopping the push listener: prompt, even against a relay that never answers,
and silent afterwards."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.net.push import STOP_WAIT_SECONDS, PushListener
from tests.services.helpers import Person, wait_for
from tests.support.components import RelayProcess


@pytest.fixture
def silent_server() -> Iterator[tuple[int, threading.Event]]:
    """Accepts TCP connections and never says a word (a hung relay, a captive portal)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _address = server.accept()
            except OSError:
                return
            held.append(connection)
            accepted.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    server.close()
    for connection in held:
        connection.close()


def test_stop_does_not_wait_out_a_stalled_handshake(
    silent_server: tuple[int, threading.Event], relay: RelayProcess
) -> None:
    port, accepted = silent_server
    states: list[bool] = []
    listener = PushListener(
        f"wss://127.0.0.1:{port}/v1/push",
        str(relay.ca_file),
        "token",
        on_envelope=lambda _envelope: None,
        on_state=states.append,
    )
    listener.start()
    assert accepted.wait(10)
    started = time.monotonic()
    listener.stop()
    # It used to wait five seconds here, holding up the app's exit.
    assert time.monotonic() - started < STOP_WAIT_SECONDS + 1
    assert states == []


def test_stop_reports_the_disconnection_once_and_then_nothing(
    tmp_path: Path, relay: RelayProcess
) -> None:
    alice = Person(tmp_path, "alice", relay)
    try:
        client = alice.client
        wait_for(lambda: client.connected, what="alice's push connection")
        assert client.push is not None
        states: list[bool] = []
        envelopes: list[object] = []
        listener = PushListener(
            client.relay.push_url(),
            client.relay.ca_file,
            client.messenger.relay_token,
            on_envelope=envelopes.append,
            on_state=states.append,
        )
        listener.start()
        wait_for(lambda: states, what="the second listener's connection")
        assert states == [True]
        listener.stop()
        assert states == [True, False]
        assert not listener.connected
        time.sleep(0.5)
        assert states == [True, False]
    finally:
        alice.stop()
