"""The next version 3 backup reads the store's own file and decrypts only the pages
that changed since the last one (app.backup.page_cache), without ever giving a
snapshot that mixes two moments."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import sqlcipher3.dbapi2 as sqlcipher

from app.backup import engine, snapshots
from app.backup import format as fmt
from app.backup.page_cache import CACHE_NAME, PageCache
from app.crypto import SqlcipherPages
from app.store import Store
from app.store.database import DB_FILE_NAME
from tests.backup.conftest import SECRET_TEXT, add_message, populate
from tests.store.conftest import protector

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture
def decrypted_pages(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The page numbers the backup decrypted, in order."""
    numbers: list[int] = []
    real = SqlcipherPages.decrypt_body

    def counting(self: SqlcipherPages, number: int, page: bytes | memoryview) -> bytes:
        numbers.append(number)
        return real(self, number, page)

    monkeypatch.setattr(SqlcipherPages, "decrypt_body", counting)
    return numbers


def _snapshot(store: Store, profile: Path, folder: Path, key: bytes = KEY) -> Path:
    return snapshots.write_snapshot(
        store, folder, key, method=fmt.METHOD_KEY, attachments_dir=profile / "attachments", keep=5
    ).path


def _restored_bodies(path: Path, target: Path) -> set[str]:
    engine.restore_backup(path, KEY, target, protector())
    store = Store.open(target, protector())
    try:
        return {row[0] for row in store.execute("SELECT body FROM messages").fetchall()}
    finally:
        store.close()


def _pages(profile: Path) -> int:
    return (profile / DB_FILE_NAME).stat().st_size // 4096


def test_the_next_backup_decrypts_only_the_pages_that_changed(
    tmp_path: Path, decrypted_pages: list[int]
) -> None:
    profile = tmp_path / "profile"
    store = Store.create(profile, protector())
    try:
        populate(store, profile, messages=4000)
        folder = tmp_path / "cloud"
        first = _snapshot(store, profile, folder)
        total = _pages(profile)
        assert sorted(decrypted_pages) == list(range(1, total + 1))  # the first reads all
        decrypted_pages.clear()
        add_message(store, "only in the second")
        second = _snapshot(store, profile, folder)
        assert total > 50
        assert 1 <= len(decrypted_pages) <= 12, (len(decrypted_pages), total)
        decrypted_pages.clear()
        third = _snapshot(store, profile, folder)  # nothing changed but page 1
        assert decrypted_pages == [1]
        assert "only in the second" not in _restored_bodies(first, tmp_path / "r1")
        for path, target in ((second, "r2"), (third, "r3")):
            engine.verify_backup(path, KEY)
            bodies = _restored_bodies(path, tmp_path / target)
            assert "only in the second" in bodies
            assert f"{SECRET_TEXT} #3999" in bodies
    finally:
        store.close()


def test_a_cache_under_another_key_or_damaged_is_ignored_and_pruned_chunks_are_not_reused(
    tmp_path: Path, decrypted_pages: list[int]
) -> None:
    profile = tmp_path / "profile"
    store = Store.create(profile, protector())
    try:
        populate(store, profile, messages=2000)
        _snapshot(store, profile, tmp_path / "cloud")
        total = _pages(profile)
        cache = profile / CACHE_NAME
        assert SECRET_TEXT.encode() not in cache.read_bytes()
        salt = (profile / DB_FILE_NAME).read_bytes()[:16]
        assert PageCache.load(cache, OTHER_KEY, salt, 4096).chunk_for(2, bytes(32)) is None
        # Another key, another folder: every page is read again.
        decrypted_pages.clear()
        other = _snapshot(store, profile, tmp_path / "other", key=OTHER_KEY)
        assert len(decrypted_pages) == total
        # The cache is now the other key's; damaged, it is merely empty.
        data = bytearray(cache.read_bytes())
        data[40] ^= 1
        cache.write_bytes(bytes(data))
        decrypted_pages.clear()
        _snapshot(store, profile, tmp_path / "other", key=OTHER_KEY)
        assert len(decrypted_pages) == total
        # A cache naming chunks a new, empty folder lacks: the pages are put again.
        decrypted_pages.clear()
        fresh = _snapshot(store, profile, tmp_path / "fresh", key=OTHER_KEY)
        _header, snapshot = snapshots.read_snapshot(fresh, OTHER_KEY)
        # Each distinct page once (equal pages, such as empty ones, share a chunk).
        assert len(decrypted_pages) == len(set(snapshot.pages)) > total // 2
        engine.verify_backup(fresh, OTHER_KEY)
        engine.verify_backup(other, OTHER_KEY)
    finally:
        store.close()


def test_the_file_is_held_still_while_the_app_writes_and_the_outbox_is_not_restored(
    tmp_path: Path,
) -> None:
    profile = tmp_path / "profile"
    store = Store.create(profile, protector())
    try:
        populate(store, profile, messages=500)
        store.outbox.add("queued-1", None, "bob", 1, b"sealed for bob", now=1)
        database = profile / DB_FILE_NAME
        with store.frozen_file() as frozen:
            assert frozen is not None
            before = hashlib.sha256(database.read_bytes()).digest()
            for number in range(300):  # more than enough for an automatic checkpoint
                add_message(store, f"written while frozen {number}")
            store.execute("PRAGMA wal_checkpoint(PASSIVE)")
            assert hashlib.sha256(database.read_bytes()).digest() == before
        path = _snapshot(store, profile, tmp_path / "cloud")
        target = tmp_path / "restored"
        assert "written while frozen 299" in _restored_bodies(path, target)
        restored = Store.open(target, protector())
        try:
            assert restored.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 0
        finally:
            restored.close()
    finally:
        store.close()


def test_a_reader_that_keeps_the_log_full_makes_the_backup_copy_the_store_instead(
    tmp_path: Path, decrypted_pages: list[int]
) -> None:
    """A log that cannot be emptied at once (another reader holds it) means the file
    alone is not the newest state: the backup then reads a scratch copy, and
    still holds everything committed."""
    profile = tmp_path / "profile"
    store = Store.create(profile, protector())
    reader = sqlcipher.connect(str(profile / DB_FILE_NAME), isolation_level=None)
    try:
        populate(store, profile, messages=300)
        reader.execute(f"PRAGMA key = \"x'{store._db_key.hex()}'\"")
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM messages").fetchone()
        add_message(store, "after the reader began")
        with store.frozen_file() as frozen:
            assert frozen is None
        path = _snapshot(store, profile, tmp_path / "cloud")
        assert not (profile / CACHE_NAME).exists()  # the scratch copy's pages are not cached
        reader.execute("ROLLBACK")
        assert "after the reader began" in _restored_bodies(path, tmp_path / "restored")
    finally:
        reader.close()
        store.close()


def test_writes_racing_the_backup_never_tear_a_snapshot(tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    store = Store.create(profile, protector())
    stop = threading.Event()
    written: list[int] = []

    def write() -> None:
        number = 0
        while not stop.is_set():
            add_message(store, f"racing {number}")
            written.append(number)
            number += 1

    try:
        populate(store, profile, messages=1000)
        writer = threading.Thread(target=write)
        writer.start()
        try:
            paths = [_snapshot(store, profile, tmp_path / "cloud") for _ in range(4)]
        finally:
            stop.set()
            writer.join()
        assert written
        for number, path in enumerate(paths):
            engine.verify_backup(path, KEY)
            bodies = _restored_bodies(path, tmp_path / f"restored-{number}")
            racing = sorted(int(b.split()[1]) for b in bodies if b.startswith("racing "))
            # Whatever moment each snapshot caught, it holds a prefix of the writes.
            assert racing == list(range(len(racing)))
    finally:
        store.close()
