"""The vault's guess limit against a relay that records and replays every byte.

Each test plays the relay (or the vault's operator) at full strength against
real nodes on SoftHSM2, and each attack here worked against protocol version 1:
replayed login_finish reset the counter, replayed register_finish brought back
erased records and old passwords, an erased id still answered OPRF evaluations,
garbage OPAQUE requests were counted, sizes told right from wrong, and the limit
bit on the 11th guess.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable

import pytest

from app.crypto import SystemRng, client_registration_start
from app.net.vault_transport import DirectTransport, run_flow
from app.protocol import vault as protocol
from app.protocol.encoding import Reader, Writer
from app.protocol.vault import LockedOut, RecordErased, RecordNotFound, WrongPassword
from tests.support.adversary import RecordingRelay
from tests.support.components import EtcdCluster
from tests.vault.conftest import Fleet
from vault_emulator.records import EtcdRecords

BACKUP_KEY = bytes(range(32))
PASSWORD = "correct horse battery"


def _relay(fleet: Fleet) -> RecordingRelay:
    return RecordingRelay(fleet.transport)


def _register(
    fleet: Fleet, relay: RecordingRelay, password: str = PASSWORD, limit: int = 10
) -> bytes:
    return run_flow(
        protocol.register(password, BACKUP_KEY, fleet.key(), attempt_limit=limit), relay
    )


def _retrieve(fleet: Fleet, relay: RecordingRelay, record_id: bytes, password: str) -> bytes:
    return run_flow(protocol.retrieve(record_id, password, fleet.key()), relay)


def _attempts_left(fleet: Fleet, record_id: bytes) -> int:
    """Spends one guess to read the counter, as the owner's app would see it."""
    with pytest.raises(WrongPassword) as wrong:
        run_flow(
            protocol.retrieve(record_id, "only to read the counter", fleet.key()), fleet.transport
        )
    return wrong.value.attempts_left


def _call(fleet: Fleet, op: str, record_id: bytes, fields: bytes) -> tuple[int, int, bytes]:
    body, response_key = protocol.seal_request(fleet.key(), op, record_id, fields, SystemRng())
    return protocol.open_response(response_key, op, fleet.transport(op, body))


def test_a_replayed_successful_finish_does_not_reset_the_counter(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory()
    relay = _relay(fleet)
    record_id = _register(fleet, relay)
    mark = relay.mark()
    assert _retrieve(fleet, relay, record_id, PASSWORD) == BACKUP_KEY
    captured = relay.since(mark)
    for _guess in range(8):
        with pytest.raises(WrongPassword):
            _retrieve(fleet, relay, record_id, "a guess")
    # Version 1 reset the counter here: every captured body, sent again, in any order.
    for item in [*captured, *reversed(captured)]:
        fleet.transport(item.op, item.body)
    assert _attempts_left(fleet, record_id) == 1
    with pytest.raises(LockedOut):
        _retrieve(fleet, relay, record_id, "the tenth guess")
    with pytest.raises(LockedOut):
        _retrieve(fleet, relay, record_id, PASSWORD)


def test_a_replayed_login_start_is_not_counted_or_evaluated_again(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory()
    relay = _relay(fleet)
    record_id = _register(fleet, relay)
    mark = relay.mark()
    with pytest.raises(WrongPassword) as wrong:
        _retrieve(fleet, relay, record_id, "a guess")
    assert wrong.value.attempts_left == 9
    start = next(item for item in relay.since(mark) if item.op == "login_start")
    for _replay in range(5):
        status, answer = fleet.transport("login_start", start.body)
        assert status == 200
        assert len(answer) == len(start.answer)
    assert _attempts_left(fleet, record_id) == 8


def test_replayed_registrations_bring_back_no_old_password_and_no_erased_record(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory()
    relay = _relay(fleet)
    record_id = _register(fleet, relay)
    registration = list(relay.seen)
    run_flow(protocol.change_password(record_id, PASSWORD, "the new password", fleet.key()), relay)
    change = relay.since(len(registration))
    # After a password change: the first registration and the change, replayed.
    relay.replay_all(fleet.transport, registration + change)
    assert _retrieve(fleet, relay, record_id, "the new password") == BACKUP_KEY
    with pytest.raises(WrongPassword):
        _retrieve(fleet, relay, record_id, PASSWORD)
    # After an erase (backups turned off): nothing brings the record back.
    run_flow(protocol.delete(record_id, "the new password", fleet.key()), relay)
    relay.replay_all(fleet.transport, list(relay.seen))
    for password in (PASSWORD, "the new password"):
        with pytest.raises(RecordNotFound):
            _retrieve(fleet, relay, record_id, password)
    with pytest.raises(RecordErased):
        run_flow(
            protocol.register(PASSWORD, BACKUP_KEY, fleet.key(), record_id=record_id),
            fleet.transport,
        )


def test_an_erased_id_answers_no_oprf_evaluation(fleet_factory: Callable[..., Fleet]) -> None:
    fleet = fleet_factory()
    relay = _relay(fleet)
    record_id = _register(fleet, relay, limit=2)
    for _guess in range(2):
        with pytest.raises((WrongPassword, LockedOut)):
            _retrieve(fleet, relay, record_id, "wrong")
    request = client_registration_start(PASSWORD.encode()).message
    status, _left, payload = _call(
        fleet, "register_start", record_id, Writer().bytes16(request).bytes16(b"").getvalue()
    )
    assert (status, payload) == (protocol.ERASED, b"")


def test_each_registration_draws_a_new_oprf_key(fleet_factory: Callable[..., Fleet]) -> None:
    """The same blinded element, evaluated for two registrations of one record id
    (a password change twice over), gives two different answers: the OPRF key is
    not derived from the id alone."""
    fleet = fleet_factory()
    relay = _relay(fleet)
    record_id = _register(fleet, relay)
    request = client_registration_start(b"the same blinded element").message
    answers = []
    for _change in range(2):
        # A replace ticket lives in an answer only the client reads: log in for one.
        login = run_flow(
            protocol._login(
                record_id, PASSWORD, fleet.key(), protocol.ACTION_REPLACE, SystemRng(), time.time
            ),
            fleet.transport,
        )
        _transfer, ticket = protocol._replace_answer(login.payload)
        status, _left, payload = _call(
            fleet,
            "register_start",
            record_id,
            Writer().bytes16(request).bytes16(ticket).getvalue(),
        )
        assert status == protocol.OK
        reader = Reader(payload)
        reader.bytes16()
        answers.append(reader.bytes16()[:32])  # the evaluated element
    assert answers[0] != answers[1]


def test_garbage_opaque_fields_are_refused_before_the_counter(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory()
    relay = _relay(fleet)
    record_id = _register(fleet, relay)
    url = fleet.nodes[0].url
    garbage_requests = [b"\x01" * 96, b"\xff" * 96, b"\x00" * 95, b"junk"]
    for garbage in garbage_requests:
        fields = Writer().u64(int(time.time())).bytes16(garbage).getvalue()
        body, _key = protocol.seal_request(
            fleet.key(), "login_start", record_id, fields, SystemRng()
        )
        response = DirectTransport([url])("login_start", body)
        assert response[0] == 400, garbage
    # A garbage finalization of the wrong size is refused too, and a well-sized one is
    # a wrong password, counted once (at login_start), never twice.
    assert _attempts_left(fleet, record_id) == 9


def test_the_relay_cannot_tell_a_right_password_from_a_wrong_one(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory()
    relay = _relay(fleet)
    record_id = _register(fleet, relay)
    shapes = {}
    for label, password in (("right", PASSWORD), ("wrong", "not it"), ("right again", PASSWORD)):
        mark = relay.mark()
        with contextlib.suppress(WrongPassword):
            _retrieve(fleet, relay, record_id, password)
        shapes[label] = [(i.op, len(i.body), i.status, len(i.answer)) for i in relay.since(mark)]
    assert shapes["right"] == shapes["wrong"] == shapes["right again"]
    assert [op for op, *_ in shapes["wrong"]] == ["login_start", "login_finish"]
    # A password change registers after a right old password; after a wrong one the
    # app sends the same two registration requests, which change nothing.
    changes = {}
    for label, old in (("wrong", "not it"), ("right", PASSWORD)):
        mark = relay.mark()
        with contextlib.suppress(WrongPassword):
            run_flow(protocol.change_password(record_id, old, PASSWORD, fleet.key()), relay)
        changes[label] = [(i.op, len(i.body), i.status, len(i.answer)) for i in relay.since(mark)]
    assert changes["right"] == changes["wrong"]
    assert [op for op, *_ in changes["wrong"]] == [
        "login_start",
        "login_finish",
        "register_start",
        "register_finish",
    ]
    assert _retrieve(fleet, relay, record_id, PASSWORD) == BACKUP_KEY
    # Every answer of every op has one size, whatever it says.
    assert len({len(item.answer) for item in relay.seen}) == 1


def test_the_tenth_wrong_guess_erases_and_later_ones_are_told_locked_out(
    fleet_factory: Callable[..., Fleet],
) -> None:
    fleet = fleet_factory()
    relay = _relay(fleet)
    record_id = _register(fleet, relay)
    for left in range(9, 0, -1):
        with pytest.raises(WrongPassword) as wrong:
            _retrieve(fleet, relay, record_id, f"guess {left}")
        assert wrong.value.attempts_left == left
    with pytest.raises(LockedOut):
        _retrieve(fleet, relay, record_id, "the tenth")
    for password in ("an eleventh", PASSWORD):
        with pytest.raises(LockedOut, match="can no longer be opened"):
            _retrieve(fleet, relay, record_id, password)


def test_an_operator_who_edits_or_puts_back_a_record_gets_locked_out(
    fleet_factory: Callable[..., Fleet],
) -> None:
    """The operator of a single node edits its SQLite records directly.

    What SQLite cannot stop is a rollback of the value *and* its version column
    together (as restoring an old copy of the file does): that is what the TPM's
    rollback witness and etcd's own version numbers are for (see
    docs/threat-model.md)."""
    fleet = fleet_factory()
    relay = _relay(fleet)
    first, second = _register(fleet, relay), _register(fleet, relay)
    database = fleet.nodes[0].data_dir / "records.sqlite3"

    def rows() -> dict[bytes, tuple[bytes, int]]:
        with sqlite3.connect(database) as db:
            return {
                bytes(r[0]): (bytes(r[1]), int(r[2]))
                for r in db.execute("SELECT id, value, version FROM sealed_records")
            }

    fresh = rows()
    for _guess in range(3):
        with pytest.raises(WrongPassword):
            _retrieve(fleet, relay, first, "a guess")
    # Put the fresh value (attempts 0) back over the newer one.
    with sqlite3.connect(database) as db:
        db.execute("UPDATE sealed_records SET value = ? WHERE id = ?", (fresh[first][0], first))
        # And flip one bit of the other record's sealed counter.
        tampered = bytearray(fresh[second][0])
        tampered[20] ^= 1
        db.execute("UPDATE sealed_records SET value = ? WHERE id = ?", (bytes(tampered), second))
    for record_id in (first, second):
        with pytest.raises(LockedOut):
            _retrieve(fleet, relay, record_id, PASSWORD)


@pytest.mark.slow
def test_on_a_fleet_replays_to_other_nodes_and_etcd_edits_by_its_operator_fail(
    fleet_factory: Callable[..., Fleet], fresh_etcd_cluster: EtcdCluster
) -> None:
    """Three nodes on TLS etcd. The relay replays to any node; the operator, with
    etcd's root credentials, edits a counter, puts an old value back, and deletes
    and re-creates a key with an old value."""
    fleet = fleet_factory(count=3, cluster=fresh_etcd_cluster)
    nodes = [DirectTransport([node.url]) for node in fleet.nodes]
    relay = RecordingRelay(nodes[0])
    record_id = _register(fleet, relay)
    mark = relay.mark()
    assert _retrieve(fleet, relay, record_id, PASSWORD) == BACKUP_KEY
    captured = relay.since(mark)
    for _guess in range(8):
        with pytest.raises(WrongPassword):
            run_flow(protocol.retrieve(record_id, "a guess", fleet.key()), nodes[1])
    for node in (nodes[2], nodes[1], nodes[0]):
        relay.replay_all(node, captured)
    assert _attempts_left(fleet, record_id) == 1

    key = EtcdRecords.PREFIX + b"r2/" + record_id.hex().encode()
    others = [_register(fleet, relay) for _ in range(3)]
    old_values = {
        other: fresh_etcd_cluster.get(EtcdRecords.PREFIX + b"r2/" + other.hex().encode())
        for other in others
    }
    for other in others:
        with pytest.raises(WrongPassword):
            run_flow(protocol.retrieve(other, "a guess", fleet.key()), nodes[2])
    edited, put_back, recreated = others
    value = fresh_etcd_cluster.get(EtcdRecords.PREFIX + b"r2/" + edited.hex().encode())
    assert value is not None
    flipped = bytearray(value)
    flipped[30] ^= 1
    fresh_etcd_cluster.put(EtcdRecords.PREFIX + b"r2/" + edited.hex().encode(), bytes(flipped))
    old = old_values[put_back]
    assert old is not None
    fresh_etcd_cluster.put(EtcdRecords.PREFIX + b"r2/" + put_back.hex().encode(), old)
    old = old_values[recreated]
    assert old is not None
    fresh_etcd_cluster.delete(EtcdRecords.PREFIX + b"r2/" + recreated.hex().encode())
    fresh_etcd_cluster.put(EtcdRecords.PREFIX + b"r2/" + recreated.hex().encode(), old)
    for tampered in others:
        for node in nodes:
            with pytest.raises(LockedOut):
                run_flow(protocol.retrieve(tampered, PASSWORD, fleet.key()), node)
    assert fresh_etcd_cluster.get(key) is not None
