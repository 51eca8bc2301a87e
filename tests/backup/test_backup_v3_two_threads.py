"""A version 3 backup reads the store's pages on the caller's thread and the
attachment files on a second one, each into packs of its own. Whatever ends the
run early (a cancel while a file is half read, a file that changes under the
backup) ends both threads and their pack writers, releases the folder's lock and
leaves every earlier snapshot whole."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from app.backup import engine, snapshots
from app.backup.errors import BackupCancelled, BackupError
from app.store import Store
from tests.backup.conftest import add_message
from tests.backup.test_backup_v3 import KEY, _bodies
from tests.backup.test_backup_v3 import _snapshot as _backup
from tests.store.conftest import protector

BACKUP_THREADS = {"backup-files", "pack-writer", "pack-checker"}


def _threads_left() -> set[str]:
    return {thread.name for thread in threading.enumerate()} & BACKUP_THREADS


def _as_before_the_failed_run(folder: Path, earlier: Path) -> None:
    """No backup thread left, the lock released, the earlier snapshot the only
    one and whole."""
    assert _threads_left() == set()
    repo = snapshots.Repository.for_key(folder, KEY)
    assert not (repo.root / snapshots.LOCK_NAME).exists()
    assert repo.snapshot_paths() == [earlier]
    engine.verify_backup(earlier, KEY)


@pytest.fixture
def big_file(full_store: tuple[Store, Path]) -> Path:
    """An attachment of three and a half pieces, so a run can stop inside it."""
    _store, profile = full_store
    path = profile / "attachments" / "video.bin"
    path.write_bytes(os.urandom(3 * snapshots.FILE_CHUNK + 12_345))
    return path


def _on_the_file_thread_first(
    monkeypatch: pytest.MonkeyPatch, then: threading.Event, do: object = None
) -> threading.Event:
    """Holds the file thread at the first chunk it seals (after calling `do`), until
    `then` is set; answers the event that says it got there."""
    real = snapshots._PackWriter.add
    reached = threading.Event()

    def add(self: snapshots._PackWriter, chunk_id: bytes, plain: bytes | memoryview) -> None:
        if threading.current_thread().name == "backup-files" and not reached.is_set():
            if callable(do):
                do()
            reached.set()
            assert then.wait(30), "the backup never went on"
        real(self, chunk_id, plain)

    monkeypatch.setattr(snapshots._PackWriter, "add", add)
    return reached


def test_a_cancel_while_a_file_is_half_read_stops_both_threads_and_keeps_the_folder(
    full_store: tuple[Store, Path],
    big_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    aside = tmp_path / "video.bin"
    big_file.rename(aside)
    earlier = _backup(store, profile, folder)
    aside.rename(big_file)
    add_message(store, "after the first backup")
    release = threading.Event()
    reached = _on_the_file_thread_first(monkeypatch, release)

    def cancelled() -> bool:
        if reached.is_set():
            release.set()
            return True
        return False

    with pytest.raises(BackupCancelled):
        _backup(store, profile, folder, cancelled=cancelled)
    assert reached.is_set() and release.is_set()
    _as_before_the_failed_run(folder, earlier)

    monkeypatch.undo()
    latest = _backup(store, profile, folder)
    target = tmp_path / "restored"
    engine.restore_backup(latest, KEY, target, protector())
    assert "after the first backup" in _bodies(target)
    assert (target / "attachments" / "video.bin").read_bytes() == big_file.read_bytes()


def test_a_file_that_grows_while_it_is_read_fails_the_backup_and_nothing_else(
    full_store: tuple[Store, Path],
    big_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    earlier = _backup(store, profile, folder, keep=5)
    (profile / "attachments" / "late.bin").write_bytes(os.urandom(2 * snapshots.FILE_CHUNK))
    release = threading.Event()
    release.set()

    def grow() -> None:
        with (profile / "attachments" / "late.bin").open("ab") as handle:
            handle.write(b"written while the backup read it")

    _on_the_file_thread_first(monkeypatch, release, grow)
    with pytest.raises(BackupError, match=r"late\.bin changed while it was being backed up"):
        _backup(store, profile, folder, keep=5)
    _as_before_the_failed_run(folder, earlier)


def test_pages_and_files_are_sealed_into_packs_of_their_own(
    full_store: tuple[Store, Path], big_file: Path, tmp_path: Path
) -> None:
    store, profile = full_store
    path = _backup(store, profile, tmp_path / "cloud")
    _header, snapshot = snapshots.read_snapshot(path, KEY)
    pages = set(snapshot.pages)
    files = {chunk for entry in snapshot.files for chunk in entry.chunks}
    video = next(entry for entry in snapshot.files if entry.path == "video.bin")
    # Fixed pieces: three whole ones and the rest.
    assert len(video.chunks) == 4 and video.size == big_file.stat().st_size
    index = snapshots.load_index(snapshots.Repository.of_snapshot(path), KEY)
    kinds = []
    for packs in index.files.values():
        for pack in packs:
            ids = {blob.chunk_id for blob in pack.blobs}
            assert ids <= pages or ids <= files, "a pack mixes pages and files"
            kinds.append("pages" if ids <= pages else "files")
    assert sorted(set(kinds)) == ["files", "pages"]
