"""Version 3 backups: incremental snapshots, read back after writing, crash-safe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.backup import engine, snapshots
from app.backup import format as fmt
from app.backup import format_v3 as v3
from app.backup.errors import CorruptBackup, WrongKey
from app.store import Store
from tests.backup.conftest import SECRET_TEXT, add_message, populate
from tests.store.conftest import protector

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _snapshot(store: Store, profile: Path, folder: Path, **kwargs: object) -> Path:
    info = snapshots.write_snapshot(
        store,
        folder,
        KEY,
        method=fmt.METHOD_KEY,
        attachments_dir=profile / "attachments",
        **kwargs,  # type: ignore[arg-type]
    )
    return info.path


def _bodies(profile: Path) -> set[str]:
    store = Store.open(profile, protector())
    try:
        return {row[0] for row in store.execute("SELECT body FROM messages").fetchall()}
    finally:
        store.close()


def _repo_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_a_second_backup_adds_only_what_changed_and_both_restore(tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    store = Store.create(profile, protector())
    populate(store, profile, messages=3000)
    folder = tmp_path / "cloud"
    first = _snapshot(store, profile, folder, keep=5)
    add_message(store, "only in the second")
    second = _snapshot(store, profile, folder, keep=5)
    infos = engine.list_backups(folder)
    assert [i.path for i in infos] == [second, first]
    assert all(i.version == 3 for i in infos)
    # The attachments are not stored again and the store's unchanged pages neither.
    assert infos[0].added < infos[1].added * 0.1, (infos[0].added, infos[1].added)
    for path, expect_new in ((first, False), (second, True)):
        engine.verify_backup(path, KEY)
        target = tmp_path / f"restored-{path.name[:6]}"
        report = engine.restore_backup(path, KEY, target, protector())
        assert ("only in the second" in _bodies(target)) is expect_new
        assert report.files == 2
        assert (target / "attachments" / "a1.bin").read_bytes() == (
            profile / "attachments" / "a1.bin"
        ).read_bytes()
    store.close()


def test_the_folder_holds_no_plaintext_and_equal_content_differs_between_keys(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    _snapshot(store, profile, folder)
    snapshots.write_snapshot(
        store, folder, OTHER_KEY, method=fmt.METHOD_KEY, attachments_dir=profile / "attachments"
    )
    attachment = (profile / "attachments" / "a1.bin").read_bytes()
    repos = sorted(p for p in folder.iterdir() if p.is_dir())
    assert len(repos) == 2
    names = []
    for repo in repos:
        names.append({p.name for p in _repo_files(repo)})
        for path in _repo_files(repo):
            data = path.read_bytes()
            assert SECRET_TEXT.encode() not in data
            assert b"SQLite format 3" not in data
            assert attachment[1000:1064] not in data
    # Same content under two keys: no file name, chunk id or pack in common.
    assert not (names[0] & names[1]) - {"lock"}


def test_damage_is_found_by_verify_and_refused_by_restore(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    path = _snapshot(store, profile, folder)
    with pytest.raises(WrongKey):
        engine.verify_backup(path, OTHER_KEY)
    repo = snapshots.Repository.of_snapshot(path)
    pack = sorted((repo.root / "data").rglob("*"))[-1]
    original = pack.read_bytes()
    for position in (len(original) // 2, len(original) - 1):
        damaged = bytearray(original)
        damaged[position] ^= 1
        pack.write_bytes(bytes(damaged))
        with pytest.raises(CorruptBackup):
            engine.verify_backup(path, KEY)
        with pytest.raises(CorruptBackup):
            engine.restore_backup(path, KEY, tmp_path / "restored", protector())
        assert not (tmp_path / "restored").exists()
    pack.write_bytes(original + b"x")
    with pytest.raises(CorruptBackup, match="does not match its name"):
        engine.verify_backup(path, KEY)
    pack.unlink()
    with pytest.raises(CorruptBackup, match="missing"):
        engine.verify_backup(path, KEY)


def test_prune_keeps_the_newest_and_deletes_what_only_the_others_used(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    paths = []
    for number in range(3):
        (profile / "attachments" / f"only-{number}.bin").write_bytes(os.urandom(50_000))
        paths.append(_snapshot(store, profile, folder, keep=5))
        (profile / "attachments" / f"only-{number}.bin").unlink()
    repo = snapshots.Repository.of_snapshot(paths[0])
    before = repo.pack_ids()
    assert snapshots.prune(folder, KEY, keep=1).snapshots == 2
    assert repo.snapshot_paths() == [paths[2]]
    assert repo.pack_ids() < before
    assert len(repo.index_paths()) == 1
    engine.verify_backup(paths[2], KEY)


class _Crash(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way handles it."""


def _crash_at(number: int) -> snapshots.Checkpoint:
    seen = [0]

    def checkpoint(_what: str) -> None:
        seen[0] += 1
        if seen[0] == number:
            raise _Crash

    return checkpoint


def test_a_backup_or_prune_killed_after_any_write_leaves_every_snapshot_whole(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    first = _snapshot(store, profile, folder, keep=5)
    counted: list[str] = []
    add_message(store, "second")
    (profile / "attachments" / "second.bin").write_bytes(os.urandom(40_000))
    _snapshot(store, profile, tmp_path / "dry", keep=1, checkpoint=counted.append)
    # Every file the run writes or deletes, as in the dry run; the real run has
    # one more snapshot to prune (keep=1), so it deletes a little more.
    steps = len(counted) + 6
    assert steps > 8
    done = [first]
    for number in range(1, steps + 1):
        try:
            path = _snapshot(store, profile, folder, keep=1, checkpoint=_crash_at(number))
            done = [path]
        except _Crash:
            # `finally` released the lock; a real kill leaves it (the next test).
            pass
        listed = {i.path for i in engine.list_backups(folder)}
        for path in done:
            if path in listed:
                engine.verify_backup(path, KEY)
        assert listed, f"no snapshot left after a crash at step {number}"
        for path in listed:
            engine.verify_backup(path, KEY)
    # The next complete run cleans up whatever the crashes left.
    last = _snapshot(store, profile, folder, keep=1)
    repo = snapshots.Repository.of_snapshot(last)
    assert repo.snapshot_paths() == [last]
    assert not list(repo.root.rglob("*.tmp"))
    index = snapshots.load_index(repo, KEY)
    listed_packs = {p.pack_id for packs in index.files.values() for p in packs}
    assert repo.pack_ids() == listed_packs
    target = tmp_path / "restored"
    engine.restore_backup(last, KEY, target, protector())
    assert "second" in _bodies(target)


KILL_SCRIPT = """
import sys
from pathlib import Path
from app.backup import snapshots
from app.backup import format as fmt
from app.store import Store
from tests.store.conftest import protector
profile, folder = Path(sys.argv[1]), Path(sys.argv[2])
store = Store.open(profile, protector())
print("ready", flush=True)
snapshots.write_snapshot(store, folder, bytes(range(32)), method=fmt.METHOD_KEY,
                         attachments_dir=profile / "attachments", keep=1)
print("done", flush=True)
"""


def test_a_backup_process_killed_midway_leaves_the_previous_snapshot_restorable(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    first = _snapshot(store, profile, folder, keep=1)
    root = Path(__file__).resolve().parents[2]
    killed = 0
    for number, delay in enumerate((0.02, 0.08, 0.15, 0.3)):
        # New data each time, so every run has packs to write when it is killed.
        (profile / "attachments" / f"big-{number}.bin").write_bytes(os.urandom(40 << 20))
        child = subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(profile), str(folder)],
            cwd=root,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(root)},
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            killed += 1
        child.wait()
        survivors = [i.path for i in engine.list_backups(folder)]
        assert survivors
        for path in survivors:
            engine.verify_backup(path, KEY)
        if first in survivors:
            assert first == survivors[-1]
    assert killed
    # The lock of a killed process on this machine is stale at once.
    last = _snapshot(store, profile, folder, keep=1)
    engine.verify_backup(last, KEY)
    assert not list(folder.rglob("*.tmp"))


def test_a_live_lock_is_respected_and_a_dead_holders_lock_is_taken_over(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    _snapshot(store, profile, folder)
    repo = snapshots.Repository.for_key(folder, KEY)
    held = snapshots.Lock(repo)
    held.acquire()
    with pytest.raises(snapshots.FolderLocked):
        _snapshot(store, profile, folder)
    held.release()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import hashlib
    import json
    import socket

    host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16]
    (repo.root / "lock").write_text(json.dumps({"host": host, "pid": dead.pid, "since": 0}))
    _snapshot(store, profile, folder)
    assert not (repo.root / "lock").exists()


def test_version_2_files_still_restore_beside_snapshots(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    old = engine.write_backup(
        store, folder, KEY, method=fmt.METHOD_KEY, attachments_dir=profile / "attachments"
    )
    _snapshot(store, profile, folder)
    versions = sorted(i.version for i in engine.list_backups(folder))
    assert versions == [2, 3]
    engine.restore_backup(old.path, KEY, tmp_path / "restored", protector())
    assert f"{SECRET_TEXT} #3" in _bodies(tmp_path / "restored")


def test_headers_refuse_unknown_kinds_flags_and_methods() -> None:
    header = v3.new_header(KEY, v3.KIND_INDEX, fmt.METHOD_KEY, created_ns=1)
    data = bytearray(v3.seal_body(KEY, header, b"\x00\x00\x00\x00"))
    assert v3.decode_index(v3.open_body(KEY, bytes(data), v3.KIND_INDEX)[1]) == []
    for position, value in ((5, 9), (6, 7), (7, 1)):
        bad = bytearray(data)
        bad[position] = value
        with pytest.raises(CorruptBackup):
            v3.open_body(KEY, bytes(bad), v3.KIND_INDEX)
    bad = bytearray(data)
    bad[-1] ^= 1
    with pytest.raises(CorruptBackup, match="authentication"):
        v3.open_body(KEY, bytes(bad), v3.KIND_INDEX)


def test_the_v3_vectors_are_reproduced_and_our_reader_accepts_them(tmp_path: Path) -> None:
    import json

    from scripts.gen_backup_vectors_v3 import VECTORS, build

    stored = json.loads(VECTORS.read_text())
    assert build() == stored
    for relative, data in stored["files"].items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(bytes.fromhex(data))
    for expected in stored["snapshots"]:
        path = tmp_path / expected["snapshot"]
        report = engine.verify_backup(path, KEY)
        assert report.files == len(expected["files"])
        _header, snapshot = snapshots.read_snapshot(path, KEY)
        assert snapshot.reserve == expected["reserve"]
    # The second snapshot reuses the first one's chunks: its pack holds only the
    # changed page and the new file.
    packs = sorted(p for p in stored["files"] if "/data/" in p)
    sizes = sorted(len(stored["files"][p]) // 2 for p in packs)
    assert sizes[0] < sizes[1] / 3


def test_a_snapshot_with_a_file_inside_another_file_is_refused() -> None:
    """`a` and `a/b` cannot both be restored: refused when the snapshot is read, so
    verify says so too rather than restore failing on a raw "File exists"."""
    chunk = bytes(32)
    for paths in (("a", "a/b"), ("a", "a-x", "a/b/c")):
        snapshot = v3.Snapshot(
            1, 4096, 48, (chunk,), tuple(v3.FileEntry(path, 1, (chunk,)) for path in paths)
        )
        with pytest.raises(CorruptBackup, match="inside another file"):
            v3.Snapshot.decode(snapshot.encode())
    fine = v3.Snapshot(1, 4096, 48, (chunk,), (v3.FileEntry("a-x", 1, (chunk,)),))
    assert v3.Snapshot.decode(fine.encode()) == fine


def test_a_backup_that_removes_nothing_only_adds_files(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    """What a sync client sees: new files only, no index rewritten and none deleted,
    until a prune removes something or many indexes have gathered."""
    store, profile = full_store
    folder = tmp_path / "cloud"
    first = _snapshot(store, profile, folder, keep=30)
    before = set(_repo_files(folder))
    for number in range(3):
        add_message(store, f"later {number}")
        _snapshot(store, profile, folder, keep=30)
        after = set(_repo_files(folder))
        lock = {p for p in after | before if p.name == "lock"}
        assert before - lock <= after, "a file the previous backups wrote went away"
        before = after
    repo = snapshots.Repository.of_snapshot(first)
    assert len(repo.index_paths()) == 4
    # Past the threshold, the indexes are merged into one (and nothing is lost).
    for number in range(snapshots.INDEX_FILES_BEFORE_MERGE):
        add_message(store, f"much later {number}")
        last = _snapshot(store, profile, folder, keep=30)
    assert len(repo.index_paths()) < snapshots.INDEX_FILES_BEFORE_MERGE
    engine.verify_backup(last, KEY)
    engine.verify_backup(first, KEY)
