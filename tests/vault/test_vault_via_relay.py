"""The vault reached the way clients reach it: through the relay's pass-through."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.net.vault_transport import (
    RelayTransport,
    Transport,
    fleet_key,
    run_flow,
    run_split_flow,
)
from app.protocol import vault as protocol
from app.protocol import vault_split
from app.protocol.vault import WrongPassword
from tests.relay.helpers import account
from tests.support.components import RelayProcess
from tests.vault.conftest import Fleet

BACKUP_KEY = bytes.fromhex("5a" * 16 + "c3" * 16)
PASSWORD = "a password the relay must never see"


class RecordingTransport(RelayTransport):
    """Keeps every byte that crossed the relay, as the relay operator could."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.seen: list[bytes] = []

    def __call__(self, op: str, body: bytes) -> tuple[int, bytes]:
        status, reply = super().__call__(op, body)
        self.seen += [body, reply]
        return status, reply


def test_relay_carries_only_opaque_bytes_and_keeps_nothing(
    fleet_factory: Callable[..., Fleet], relay_factory: Callable[..., RelayProcess]
) -> None:
    fleet = fleet_factory()
    relay = relay_factory(extra_args=["--vault", fleet.nodes[0].url])
    transport = RecordingTransport(account(relay))
    key = fleet_key(transport, fleet.pinned)
    record_id = run_flow(protocol.register(PASSWORD, BACKUP_KEY, key), transport)
    assert run_flow(protocol.retrieve(record_id, PASSWORD, key), transport) == BACKUP_KEY
    with pytest.raises(WrongPassword) as wrong:
        run_flow(protocol.retrieve(record_id, "a wrong guess", key), transport)
    assert wrong.value.attempts_left == 9

    secrets = [BACKUP_KEY, PASSWORD.encode(), record_id, record_id.hex().encode()]
    # On the wire: neither the key, the password nor even which record is asked for.
    wire = b"".join(transport.seen)
    for secret in secrets:
        assert secret not in wire
    # At rest on the relay: its database, WAL and logs.
    stored = b"".join(p.read_bytes() for p in relay.data_dir.rglob("*") if p.is_file())
    for secret in secrets:
        assert secret not in stored
    assert b"a wrong guess" not in stored


def test_a_burst_past_the_relays_vault_rate_limit_waits_and_loses_no_answer(
    fleet_factory: Callable[..., Fleet], relay_factory: Callable[..., RelayProcess]
) -> None:
    """The relay answers 429 before any node sees the request, so nothing was
    counted: the client waits as told and goes on, instead of failing a restore."""
    fleet = fleet_factory()
    relay = relay_factory(extra_args=["--vault", fleet.nodes[0].url])
    transport = RecordingTransport(account(relay))
    key = fleet_key(transport, fleet.pinned)
    record_id = run_flow(protocol.register(PASSWORD, BACKUP_KEY, key, attempt_limit=40), transport)
    # Two requests a guess: 30 guesses are three times the relay's burst of 20.
    for guess in range(15):
        with pytest.raises(WrongPassword) as wrong:
            run_flow(protocol.retrieve(record_id, f"guess {guess}", key), transport)
        assert wrong.value.attempts_left == 39 - guess
    assert run_flow(protocol.retrieve(record_id, PASSWORD, key), transport) == BACKUP_KEY


def test_the_split_vault_through_the_relay_any_two_domains_and_nothing_kept(
    fleet_factory: Callable[..., Fleet], relay_factory: Callable[..., RelayProcess]
) -> None:
    domains = [fleet_factory() for _ in range(3)]
    relay = relay_factory(
        extra_args=[
            arg
            for number, fleet in enumerate(domains, 1)
            for arg in ("--vault-domain", f"{number}={fleet.nodes[0].url}")
        ]
    )
    client = account(relay)
    transports = [RecordingTransport(client, number) for number in (1, 2, 3)]
    keys = [fleet_key(t, fleet.pinned) for t, fleet in zip(transports, domains, strict=True)]
    # Each domain's bundle is its own: domain 1's key is not domain 2's.
    with pytest.raises(protocol.VaultKeyMismatch):
        fleet_key(transports[1], domains[0].pinned)
    record_id, stored = run_split_flow(
        vault_split.register(PASSWORD, BACKUP_KEY, keys), list(transports)
    )
    assert stored == {1, 2, 3}
    for down in (None, 1, 2, 3):
        reachable: list[Transport] = [
            (lambda _op, _body: (503, b"")) if number == down else t
            for number, t in enumerate(transports, 1)
        ]
        assert run_split_flow(vault_split.recover(PASSWORD, keys, record_id), reachable) == (
            BACKUP_KEY
        )
    with pytest.raises(WrongPassword):
        run_split_flow(vault_split.recover("a wrong guess", keys, record_id), list(transports))
    secrets = [BACKUP_KEY, PASSWORD.encode(), record_id, record_id.hex().encode()]
    wire = b"".join(b for t in transports for b in t.seen)
    stored_bytes = b"".join(p.read_bytes() for p in relay.data_dir.rglob("*") if p.is_file())
    for secret in secrets:
        assert secret not in wire
        assert secret not in stored_bytes
    # A domain that does not exist.
    assert client.vault_call("split_evaluate", b"x", 4)[0] == 422
