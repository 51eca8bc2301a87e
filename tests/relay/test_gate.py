"""Grouped sends and the storage gate: many requests share a commit, each keeps its own outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.gate import SqliteGate, gate_for
from relay.storage import MailboxQuota, NewEnvelope, Storage, open_storage


@pytest.fixture
def storage(tmp_path: Path, backend: str | None) -> Iterator[Storage]:
    opened = open_storage(tmp_path, backend)
    yield opened
    opened.close()


def _quota(envelopes: int) -> MailboxQuota:
    return MailboxQuota(envelopes, bytes=1 << 30)


def _mailbox(storage: Storage, name: str) -> int:
    return storage.create_account(name, "laptop", f"token-{name}", 0)


def _envelope(account_id: int, client_id: str | None) -> NewEnvelope:
    """A None `client_id` makes the insert violate NOT NULL inside the transaction."""
    return NewEnvelope(account_id, 1, client_id, "alice", 1, b"cipher", 0)  # type: ignore[arg-type]


def _ids(storage: Storage, account_id: int) -> list[str]:
    return [row["id"] for row in storage.pending(account_id, 1, 0, 1000, 0)]


def test_a_group_keeps_each_sends_outcome_and_order(storage: Storage) -> None:
    bob = _mailbox(storage, "bob")
    carol = _mailbox(storage, "carol")
    outcomes = storage.enqueue_group(
        [
            ([_envelope(bob, "a"), _envelope(carol, "a")], _quota(10)),
            ([_envelope(bob, "a")], _quota(10)),  # the same message again, in the same transaction
            ([_envelope(bob, "b"), _envelope(bob, "c"), _envelope(bob, "d")], _quota(3)),
        ]
    )
    assert outcomes == [["queued", "queued"], ["duplicate"], ["queued", "queued", "quota"]]
    assert _ids(storage, bob) == ["a", "b", "c"]
    assert _ids(storage, carol) == ["a"]
    # A retry of something already queued is a duplicate even when the mailbox is full.
    assert storage.enqueue([_envelope(bob, "b"), _envelope(bob, "e")], _quota(3)) == [
        "duplicate",
        "quota",
    ]


def test_one_failing_send_does_not_fail_its_neighbours(storage: Storage) -> None:
    bob = _mailbox(storage, "bob")
    outcomes = storage.enqueue_group(
        [
            ([_envelope(bob, "before")], _quota(10)),
            (
                [_envelope(bob, None)],
                _quota(10),
            ),  # violates NOT NULL
            ([_envelope(bob, "after")], _quota(10)),
        ]
    )
    assert outcomes[0] == ["queued"]
    assert isinstance(outcomes[1], Exception)
    assert outcomes[2] == ["queued"]
    assert _ids(storage, bob) == ["before", "after"]


def test_the_gate_matches_the_backend(storage: Storage) -> None:
    gate = gate_for(storage)
    assert isinstance(gate, SqliteGate) == (storage.dialect == "sqlite")


def test_concurrent_sends_through_the_gate_are_all_stored_once(storage: Storage) -> None:
    bob = _mailbox(storage, "bob")
    gate = gate_for(storage)

    async def scenario() -> list[Any]:
        gate.start(asyncio.get_running_loop())
        try:
            sends = [
                gate.enqueue([_envelope(bob, f"m{i % 150}")], _quota(1000)) for i in range(300)
            ]
            broken = gate.enqueue([_envelope(bob, None)], _quota(1000))
            acked = gate.write(storage.ack, bob, 1, [])
            return await asyncio.gather(*sends, broken, acked, return_exceptions=True)
        finally:
            gate.stop()

    *statuses, broken, acked = asyncio.run(scenario())
    assert sorted(s[0] for s in statuses) == ["duplicate"] * 150 + ["queued"] * 150
    assert isinstance(broken, Exception)
    assert "null" in str(broken).lower()
    assert acked == 0
    assert sorted(_ids(storage, bob)) == sorted(f"m{i}" for i in range(150))


def test_a_request_that_goes_away_does_not_stop_the_writer(tmp_path: Path) -> None:
    storage = open_storage(tmp_path, None)
    bob = _mailbox(storage, "bob")
    gate = SqliteGate(storage)

    async def scenario() -> list[str]:
        gate.start(asyncio.get_running_loop())
        try:
            abandoned = asyncio.ensure_future(gate.enqueue([_envelope(bob, "gone")], _quota(10)))
            await asyncio.sleep(0)
            abandoned.cancel()
            return await gate.enqueue([_envelope(bob, "next")], _quota(10))
        finally:
            gate.stop()

    assert asyncio.run(scenario()) == ["queued"]
    # The abandoned request's write still happened; its retry would be a duplicate.
    assert set(_ids(storage, bob)) == {"gone", "next"}
    storage.close()


def test_the_gate_refuses_writes_when_not_started(tmp_path: Path) -> None:
    storage = open_storage(tmp_path, None)
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(SqliteGate(storage).enqueue([], _quota(1)))
    storage.close()
