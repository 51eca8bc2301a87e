"""The store keeps history private on disk and consistent through crashes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend

from app.store import (
    KeyringProtector,
    PassphraseProtector,
    Store,
    StoreCorrupt,
    StoreError,
    StoreLocked,
    WrongPassphrase,
)
from app.store.database import _split_statements
from app.store.schema import MIGRATIONS
from tests.store.conftest import FAST, PASSPHRASE, protector
from tests.support.processes import python_env

SECRET_TEXT = "the eagle lands at midnight 7f3a"


def _conversation_with(store: Store, peer: str = "bob", count: int = 3) -> int:
    conversation = store.conversations.direct(peer, now=1)
    for number in range(count):
        store.messages.add(
            conversation_id=conversation.id,
            uuid=f"{peer}-{number}",
            sender=peer,
            outgoing=False,
            body=f"{SECRET_TEXT} #{number}",
            sent_at=1_000 + number,
            status="received",
        )
    return conversation.id


def _profile_bytes(profile: Path) -> bytes:
    return b"".join(path.read_bytes() for path in profile.rglob("*") if path.is_file())


def test_database_file_is_encrypted_and_holds_no_plaintext(store: Store, profile: Path) -> None:
    # Long enough that random ciphertext never holds it by chance (3 bytes did, ~1%).
    peer = "bartholomew-the-peer"
    _conversation_with(store, peer=peer)
    store.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = (profile / "store.db").read_bytes()
    assert not db.startswith(b"SQLite format 3")
    everything = _profile_bytes(profile)
    assert SECRET_TEXT.encode() not in everything
    assert peer.encode() not in everything


def test_key_never_on_disk_in_the_clear(store: Store, profile: Path) -> None:
    key_hex = store.execute("PRAGMA key").fetchall()  # SQLCipher never reveals it
    assert key_hex in ([], [("ok",)])
    key_file = json.loads((profile / "store.key").read_text())
    assert set(key_file) == {"version", "method", "kdf", "nonce", "wrapped_key"}
    # The raw key can be recovered only through the passphrase: scan for it.
    from app.store.keyfile import KeyFile

    raw_key = protector().unwrap(KeyFile.from_json((profile / "store.key").read_text()))
    everything = _profile_bytes(profile)
    assert raw_key not in everything
    assert raw_key.hex().encode() not in everything
    assert PASSPHRASE.encode() not in everything


def test_reopen_with_passphrase_keeps_history(store: Store, profile: Path) -> None:
    conversation_id = _conversation_with(store)
    store.close()
    reopened = Store.open(profile, protector())
    assert [m.body for m in reopened.messages.newest(conversation_id)][-1].endswith("#2")
    reopened.close()


def test_wrong_passphrase_is_a_clear_error_and_touches_nothing(store: Store, profile: Path) -> None:
    _conversation_with(store)
    store.close()
    before = {p.name: p.read_bytes() for p in profile.iterdir()}
    with pytest.raises(WrongPassphrase, match="not correct"):
        Store.open(profile, protector("wrong passphrase"))
    assert {p.name: p.read_bytes() for p in profile.iterdir()} == before


def test_database_does_not_open_without_the_key(store: Store, profile: Path) -> None:
    import sqlcipher3.dbapi2 as sqlcipher

    _conversation_with(store)
    store.close()
    connection = sqlcipher.connect(str(profile / "store.db"))
    with pytest.raises(sqlcipher.DatabaseError):
        connection.execute("SELECT * FROM messages").fetchall()
    connection.close()
    connection = sqlcipher.connect(str(profile / "store.db"))
    connection.execute("PRAGMA key = \"x'" + "00" * 32 + "'\"")
    with pytest.raises(sqlcipher.DatabaseError):
        connection.execute("SELECT * FROM messages").fetchall()
    connection.close()


def test_change_passphrase_rewraps_only(store: Store, profile: Path) -> None:
    conversation_id = _conversation_with(store)
    store.close()
    db_before = (profile / "store.db").read_bytes()
    Store.change_protection(profile, protector(), protector("a new passphrase!"))
    assert (profile / "store.db").read_bytes() == db_before
    with pytest.raises(WrongPassphrase):
        Store.open(profile, protector())
    reopened = Store.open(profile, protector("a new passphrase!"))
    assert reopened.messages.count(conversation_id) == 3
    reopened.close()


def test_tampered_key_file_is_refused(store: Store, profile: Path) -> None:
    store.close()
    path = profile / "store.key"
    original = json.loads(path.read_text())
    weakened = dict(original, kdf=dict(original["kdf"], time_cost=2))
    path.write_text(json.dumps(weakened))
    with pytest.raises(WrongPassphrase):  # header is authenticated: the unwrap fails
        Store.open(profile, protector())
    path.write_text("{not json")
    with pytest.raises(StoreCorrupt):
        Store.open(profile, protector())
    below_floor = dict(original, kdf=dict(original["kdf"], memory_cost_kib=8))
    path.write_text(json.dumps(below_floor))
    with pytest.raises(StoreCorrupt, match="minimum"):
        Store.open(profile, protector())


class _FileKeyring(KeyringBackend):
    """A keyring backend that keeps its secrets in a separate directory.

    The OS keyring (Secret Service) needs a desktop session that CI lacks; this
    backend goes through the same `keyring` API the app uses.
    """

    priority = 1  # type: ignore[assignment]

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def _path(self, service: str, username: str) -> Path:
        return self.root / f"{service}--{username}"

    def get_password(self, service: str, username: str) -> str | None:
        path = self._path(service, username)
        return path.read_text() if path.exists() else None

    def set_password(self, service: str, username: str, password: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._path(service, username).write_text(password)

    def delete_password(self, service: str, username: str) -> None:
        self._path(service, username).unlink()


def test_keyring_protection(tmp_path: Path) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(_FileKeyring(tmp_path / "keyring"))
    try:
        profile = tmp_path / "profile"
        store = Store.create(profile, KeyringProtector("profile-a"))
        _conversation_with(store)
        store.close()
        assert Store.key_method(profile) == "keyring"
        reopened = Store.open(profile, KeyringProtector("profile-a"))
        reopened.close()
        wrapping = (tmp_path / "keyring" / "cipherline--profile-a").read_text()
        assert wrapping.encode() not in _profile_bytes(profile)
        (tmp_path / "keyring" / "cipherline--profile-a").unlink()
        with pytest.raises(StoreLocked):
            Store.open(profile, KeyringProtector("profile-a"))
    finally:
        keyring.set_keyring(previous)


def test_transaction_is_all_or_nothing(store: Store) -> None:
    conversation_id = _conversation_with(store, count=0)
    with pytest.raises(RuntimeError), store.transaction():
        store.sessions.save("bob", 1, b"ratchet state v2", now=5)
        store.messages.add(
            conversation_id=conversation_id,
            uuid="m-1",
            sender="bob",
            outgoing=False,
            body="hello",
            sent_at=5,
            status="received",
        )
        raise RuntimeError("crash between the two writes")
    assert store.sessions.get("bob", 1) is None
    assert store.messages.count(conversation_id) == 0


def test_full_text_search_follows_inserts_updates_and_deletes(store: Store) -> None:
    conversation_id = _conversation_with(store, count=5)
    hits = store.messages.search("eagle midnight")
    assert len(hits) == 5
    assert all("[" in hit.snippet for hit in hits)
    positions = sorted(hit.position for hit in hits)
    assert positions == [0, 1, 2, 3, 4]
    first = store.messages.by_uuid("bob-0")
    assert first is not None
    store.execute("UPDATE messages SET body = 'rewritten words' WHERE id = ?", (first.id,))
    assert len(store.messages.search("eagle")) == 4
    assert len(store.messages.search("rewritten")) == 1
    store.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
    assert store.messages.search("eagle") == []


@pytest.mark.parametrize(
    "query", ['"', "AND", "NEAR(", "*", "a OR", "body:x", "'; DROP TABLE messages; --", "((("]
)
def test_hostile_search_queries_never_raise(store: Store, query: str) -> None:
    _conversation_with(store)
    store.messages.search(query)


def test_paging_is_keyset_based_and_ordered(store: Store) -> None:
    conversation = store.conversations.direct("carol", now=1)
    store.messages.add_many(
        (conversation.id, f"u{i}", "carol", False, f"message {i}", 10_000 + i, "received")
        for i in range(500)
    )
    newest = store.messages.newest(conversation.id, 50)
    assert [m.body for m in newest] == [f"message {i}" for i in range(450, 500)]
    older = store.messages.before(conversation.id, newest[0].id, 50)
    assert [m.body for m in older] == [f"message {i}" for i in range(400, 450)]
    around = store.messages.around(conversation.id, newest[0].id - 100, 11)
    assert len(around) == 11
    assert store.messages.position(newest[-1].id) == 499
    plan = " ".join(
        str(row)
        for row in store.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE conversation_id = ?"
            " ORDER BY sent_at DESC, id DESC LIMIT 50",
            (conversation.id,),
        ).fetchall()
    )
    assert "messages_by_conversation" in plan
    assert "TEMP B-TREE" not in plan


def test_identity_change_is_recorded_and_clears_verification(store: Store) -> None:
    assert store.contacts.observe_identity("dave", b"key-1", now=1) is False
    store.contacts.set_verified("dave", True, now=2)
    assert store.contacts.observe_identity("dave", b"key-1", now=3) is False
    assert store.contacts.observe_identity("dave", b"key-2", now=4) is True
    contact = store.contacts.get("dave")
    assert contact is not None
    assert contact.identity_changed and not contact.verified
    assert store.contacts.identity_history("dave") == [(b"key-1", b"key-2", 4)]


def test_interrupted_migration_leaves_the_old_version(profile: Path) -> None:
    store = Store.create(profile, protector())
    assert store.schema_version == len(MIGRATIONS)
    broken = [*MIGRATIONS, "CREATE TABLE extra (x INTEGER);\nTHIS IS NOT SQL;"]
    with pytest.raises(Exception, match="syntax"):
        store._migrate(broken)
    assert store.schema_version == len(MIGRATIONS)
    assert store.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    working = [*MIGRATIONS, "CREATE TABLE extra (x INTEGER);"]
    store._migrate(working)
    assert store.schema_version == len(MIGRATIONS) + 1
    store.close()


def test_newer_schema_is_refused(profile: Path) -> None:
    store = Store.create(profile, protector())
    store.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    store.close()
    with pytest.raises(StoreError, match="newer Cipherline"):
        Store.open(profile, protector())


def test_split_statements_keeps_trigger_bodies_whole() -> None:
    statements = _split_statements(MIGRATIONS[0])
    triggers = [s for s in statements if s.startswith("CREATE TRIGGER")]
    assert len(triggers) == 3
    assert all(s.rstrip(";").endswith("END") for s in triggers)


def test_export_import_round_trip(store: Store, tmp_path: Path) -> None:
    conversation_id = _conversation_with(store, count=20)
    store.contacts.observe_identity("bob", b"\x00\x01key", now=1)
    store.settings.set("theme", "system")
    store.sessions.save("bob", 1, b"\xffstate", now=1)
    records = list(store.export_records())
    assert records[0][0] == "meta"
    target = Store.create(tmp_path / "restored", protector())
    counts = target.import_records(iter(records))
    assert counts["messages"] == 20
    assert target.messages.count(conversation_id) == 20
    assert target.settings.get("theme") == "system"
    assert target.sessions.get("bob", 1) == b"\xffstate"
    contact = target.contacts.get("bob")
    assert contact is not None and contact.identity_key == b"\x00\x01key"
    assert len(target.messages.search("eagle")) == 20
    with pytest.raises(StoreError, match="empty profile"):
        target.import_records(iter(records))
    target.close()


def test_import_is_all_or_nothing(store: Store, tmp_path: Path) -> None:
    _conversation_with(store, count=5)
    records = list(store.export_records())
    target = Store.create(tmp_path / "restored", protector())
    with pytest.raises(StoreError):
        target.import_records(iter(records[:-1]))  # one message short of the contents
    assert target.conversations.all() == []
    for bad in (
        [("meta", b"{]")],
        [*records[:1], ("nonsense", b"{}")],
        [*records[:1], ("messages", b'{"nope": 1}')],
    ):
        with pytest.raises(StoreError):
            target.import_records(iter(bad))
    assert target.conversations.all() == []
    target.close()


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from app.crypto import Argon2Params
    from app.store import PassphraseProtector, Store
    fast = Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)
    store = Store.open(Path(sys.argv[1]), PassphraseProtector(sys.argv[2], fast))
    conversation = store.conversations.direct("bob", now=1)
    number = 0
    while True:
        with store.transaction():
            store.sessions.save("bob", 1, f"state-{number}".encode(), now=number)
            store.messages.add(conversation_id=conversation.id, uuid=f"k-{number}",
                sender="bob", outgoing=False, body=f"msg {number}", sent_at=number,
                status="received")
        number += 1
        if number == 50:
            print("ready", flush=True)
    """
)


def test_sigkill_during_writes_leaves_a_consistent_store(store: Store, profile: Path) -> None:
    store.close()
    for _round in range(2):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(profile), PASSPHRASE],
            stdout=subprocess.PIPE,
            env=python_env(),
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == b"ready"
        time.sleep(0.2)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        reopened = Store.open(profile, PassphraseProtector(PASSPHRASE, FAST))
        conversation = reopened.conversations.by_peer("bob")
        assert conversation is not None
        last = reopened.messages.last(conversation.id)
        assert last is not None
        # The ratchet state always matches the newest stored message.
        assert reopened.sessions.get("bob", 1) == f"state-{last.sent_at}".encode()
        reopened.execute("DELETE FROM messages")
        reopened.close()


def test_a_failed_nested_transaction_undoes_only_its_own_writes(store: Store) -> None:
    with store.transaction():
        store.settings.set("kept", 1)
        with pytest.raises(RuntimeError), store.transaction():
            store.settings.set("undone", 2)
            raise RuntimeError("inner failure")
        store.settings.set("also kept", 3)
    assert store.settings.get("kept") == 1
    assert store.settings.get("undone") is None
    assert store.settings.get("also kept") == 3


def test_after_an_import_new_messages_are_still_indexed(store: Store, tmp_path: Path) -> None:
    conversation_id = _conversation_with(store, count=3)
    target = Store.create(tmp_path / "restored", protector())
    target.import_records(iter(list(store.export_records())))
    assert len(target.messages.search("eagle")) == 3
    target.messages.add(
        conversation_id=conversation_id,
        uuid="after-restore",
        sender="bob",
        outgoing=False,
        body="a zeppelin after the restore",
        sent_at=5_000,
        status="received",
    )
    assert len(target.messages.search("zeppelin")) == 1
    target.close()


def test_a_closed_store_answers_with_its_own_error(profile: Path) -> None:
    opened = Store.create(profile, protector())
    opened.close()
    with pytest.raises(StoreError, match="closed"):
        opened.backup_state.get()


def test_export_reads_a_snapshot_and_never_blocks_writers(store: Store) -> None:
    import threading

    conversation_id = _conversation_with(store, count=1200)
    records = store.export_records()
    meta = json.loads(next(records)[1])
    assert meta["counts"]["messages"] == 1200
    next(records)  # the export is now mid-way through its snapshot

    def write() -> None:
        store.messages.add(
            conversation_id=conversation_id,
            uuid="during-backup",
            sender="bob",
            outgoing=False,
            body="written while the backup runs",
            sent_at=9_999,
            status="received",
        )

    writer = threading.Thread(target=write)
    writer.start()
    writer.join(timeout=5)
    assert not writer.is_alive(), "a write waited for the backup"
    rest = list(records)
    messages = [payload for table, payload in rest if table == "messages"]
    assert len(messages) == 1200  # the snapshot, without the later message
    assert store.messages.count(conversation_id) == 1201
