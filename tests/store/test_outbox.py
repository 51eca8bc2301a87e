"""The outbox holds back the items of a recipient device that must wait, and only
those, across restarts (issue #21; the policy is app/services/delivery.py)."""

from __future__ import annotations

from pathlib import Path

from app.store import Store
from app.store.schema import MIGRATIONS
from tests.store.conftest import protector


def _queue(store: Store, *items: tuple[str, str, int]) -> None:
    for client_id, recipient, device_id in items:
        store.outbox.add(client_id, None, recipient, device_id, b"ciphertext", now=1_000)


def _due(store: Store, now: int) -> list[str]:
    return [item.client_id for item in store.outbox.due(now, 100)]


def test_a_waiting_device_holds_back_its_items_and_no_others(store: Store) -> None:
    _queue(store, ("b1", "bob", 1), ("c1", "carol", 1), ("b2", "bob", 2), ("b3", "bob", 1))
    store.outbox.defer("bob", 1, not_before=5_000, failures=1)
    assert _due(store, 4_999) == ["c1", "b2"]
    # Queued later, an item for the waiting device waits too: the order holds.
    _queue(store, ("b4", "bob", 1))
    assert _due(store, 4_999) == ["c1", "b2"]
    assert _due(store, 5_000) == ["b1", "c1", "b2", "b3", "b4"]
    assert [item.client_id for item in store.outbox.pending()] == ["b1", "c1", "b2", "b3", "b4"]
    backoff = store.outbox.backoff("bob", 1)
    assert backoff is not None and (backoff.not_before, backoff.failures) == (5_000, 1)

    store.outbox.defer("bob", 1, not_before=9_000, failures=2)
    backoff = store.outbox.backoff("bob", 1)
    assert backoff is not None and (backoff.not_before, backoff.failures) == (9_000, 2)
    store.outbox.clear_backoff([("bob", 1)])
    assert store.outbox.backoff("bob", 1) is None
    assert _due(store, 0) == ["b1", "c1", "b2", "b3", "b4"]
    assert [i.client_id for i in store.outbox.items(["b3", "gone", "c1"])] == ["b3", "c1"]
    assert store.outbox.items(["c1"])[0].created_at == 1_000


def test_an_older_profile_gains_the_waits_and_keeps_them_across_restarts(profile: Path) -> None:
    store = Store.create(profile, protector())
    _queue(store, ("b1", "bob", 1), ("c1", "carol", 1))
    # A profile with items queued before the migration that adds the waits...
    number = next(n for n, m in enumerate(MIGRATIONS, 1) if "CREATE TABLE outbox_backoff" in m)
    store.execute("DROP TABLE outbox_backoff")
    store.execute(f"PRAGMA user_version = {number - 1}")
    store._migrate(MIGRATIONS[:number])
    assert store.schema_version == number
    store.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")  # later ones ran already
    store.close()

    store = Store.open(profile, protector())
    # ...keeps them, all due.
    assert _due(store, 0) == ["b1", "c1"]
    store.outbox.defer("bob", 1, not_before=5_000, failures=3)
    store.close()

    store = Store.open(profile, protector())
    try:
        assert _due(store, 4_000) == ["c1"]
        backoff = store.outbox.backoff("bob", 1)
        assert backoff is not None and backoff.failures == 3
    finally:
        store.close()
