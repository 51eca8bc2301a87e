"""Back up and restore a large profile; compare with raw AES-256-GCM and the disk.

The profile holds N messages (1,000,000 in the full run) and attachment files
(1 GiB in the full run, already-encrypted random bytes as in a real profile).
Limits measured in the same run, in the same folder: AES-256-GCM sealing of 1 MiB
chunks, and a sequential write of the same number of bytes with a final fsync
(paced and dropped behind like the backup, on a quiet disk, before and after; the
better one counts). A plain buffered write of the same size is reported beside
it: on a virtual machine whose host hands out memory on first touch, a writer
that keeps taking new page-cache pages measures the memory, not the disk (it
came out at 350-650 MB/s here against 2,500-3,000 MB/s for the disk itself).
Target: backup and restore MB/s at least 70% of the smaller limit, with the peak
memory of the process doing the backup and restore under 300 MB.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import queue
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from app.backup import engine, snapshots
from app.backup import format as fmt
from app.crypto import AeadKey, ReusableAead, random_bytes
from app.store import PassphraseProtector, Store
from app.store.durability import WritebackPacer
from bench.bench_store import FAST, INSERT, _conversations, _rows
from bench.harness import BenchReport, Comparison, Figure

KEY = bytes(range(32))
MiB = 1 << 20
QUIET_SECONDS = 2


def _make_profile(root: Path, messages: int, attachment_bytes: int) -> Path:
    profile = root / "profile"
    store = Store.create(profile, PassphraseProtector("bench", FAST))
    with store.transaction():
        _conversations(store.execute)
        batch = []
        for row in _rows(messages, messages // 10):
            batch.append(row)
            if len(batch) == 10_000:
                store.executemany(INSERT, batch)
                batch.clear()
        if batch:
            store.executemany(INSERT, batch)
    store.close()
    attachments = profile / "attachments"
    attachments.mkdir(exist_ok=True)
    written, number = 0, 0
    while written < attachment_bytes:
        size = min(16 * MiB, attachment_bytes - written)
        with (attachments / f"file-{number:05d}.bin").open("wb") as handle:
            left = size
            while left:
                # Every byte fresh, like real attachments (each a ciphertext under its
                # own key): a repeated block would let version 3 store it once.
                piece = os.urandom(min(left, 4 * MiB))
                handle.write(piece)
                left -= len(piece)
        written += size
        number += 1
    return profile


def _child(profile: str, folder: str, target: str, queue: Any) -> None:
    """Backup then restore in a fresh process, so its peak RSS is theirs alone."""
    store = Store.open(Path(profile), PassphraseProtector("bench", FAST))
    # The one step both sides must take in full: SQLCipher copying every page of
    # the store under a new key (the backup's export, the restore's rebuild).
    started = time.perf_counter()
    image = store.export_image()
    copy_seconds = time.perf_counter() - started
    image.discard()
    _quiet_disk()
    started = time.perf_counter()
    info = engine.write_backup(
        store,
        Path(folder),
        KEY,
        method=fmt.METHOD_KEY,
        attachments_dir=Path(profile) / "attachments",
    )
    backup_seconds = time.perf_counter() - started
    store.close()
    _quiet_disk()
    started = time.perf_counter()
    engine.restore_backup(info.path, KEY, Path(target), PassphraseProtector("bench", FAST))
    restore_seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((info.size, backup_seconds, restore_seconds, copy_seconds, peak_kib))


def _quiet_disk() -> None:
    """Every timed phase, and the disk limit, starts on a disk with nothing left to
    write: on a virtual disk a phase that follows another otherwise pays for the
    other's writeback, and the limit would be measured low (it came out at 430
    MB/s measured right after a restore, 600-1,400 MB/s on a quiet disk here)."""
    os.sync()
    time.sleep(QUIET_SECONDS)


def _aes_rate(total: int) -> float:
    aead = ReusableAead(AeadKey(random_bytes(32)))
    chunk = os.urandom(MiB)
    nonce = bytes(12)
    count = max(64, total // MiB // 4)
    started = time.perf_counter()
    for _ in range(count):
        aead.seal(nonce, chunk, b"header")
    return count * MiB / (time.perf_counter() - started)


def _disk_rate(folder: Path, total: int, *, drop_behind: bool = True) -> float:
    chunk = os.urandom(MiB)
    path = folder / "disk-probe.bin"
    started = time.perf_counter()
    with path.open("wb", buffering=0) as handle:
        # Paced like the backup itself, so the limit is what the disk can take,
        # not a burst into the page cache followed by one long fsync.
        pacer = WritebackPacer(drop_behind=drop_behind)
        pacer.start_file(handle.fileno())
        for number in range(max(1, total // MiB)):
            handle.write(chunk)
            pacer.written((number + 1) * MiB)
        pacer.end_file()
        os.fsync(handle.fileno())
        pacer.close()
    rate = (total // MiB) * MiB / (time.perf_counter() - started)
    path.unlink()
    return rate


def _read_range(path: Path, into: memoryview, offset: int) -> int:
    """`len(into)` bytes of `path` from `offset`, from the disk (O_DIRECT, 4 MiB reads)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:  # a file system without O_DIRECT: drop the cache
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    try:
        got = 0
        while got < len(into) and (
            count := os.preadv(fd, [into[got : got + 4 * MiB]], offset + got)
        ):
            got += count
        return got
    finally:
        os.close(fd)


def _verified_write_rate(folder: Path, total: int) -> float:
    """Bytes per second at which the disk takes `total` bytes in 16 MiB files, each
    fsync'd, and gives every one back, read as a backup's read-back reads a pack
    (O_DIRECT, 4 MiB reads, its two halves at once, while the next is written):
    what a backup that reads back all it wrote needs from the disk, with no
    hashing and no cipher. The writes are paced as in `_disk_rate`."""
    piece = os.urandom(16 * MiB)
    half = len(piece) // 2
    count = max(1, total // len(piece))
    written: queue.Queue[Path | None] = queue.Queue()
    scratch = mmap.mmap(-1, len(piece))
    failures: list[BaseException] = []

    def read_back() -> None:
        with memoryview(scratch) as view:
            while (path := written.get()) is not None:
                got: list[int] = []
                try:
                    second = threading.Thread(
                        target=lambda path=path, got=got: got.append(
                            _read_range(path, view[half:], half)
                        )
                    )
                    second.start()
                    got.append(_read_range(path, view[:half], 0))
                    second.join()
                    if sum(got) != len(piece):
                        raise RuntimeError("the disk probe read back short")
                except BaseException as error:
                    failures.append(error)
                path.unlink()

    reader = threading.Thread(target=read_back)
    started = time.perf_counter()
    reader.start()
    try:
        for number in range(count):
            path = folder / f"verified-probe-{number}.bin"
            with path.open("wb", buffering=0) as handle:
                pacer = WritebackPacer()
                pacer.start_file(handle.fileno())
                for at in range(0, len(piece), 2 * MiB):
                    handle.write(memoryview(piece)[at : at + 2 * MiB])
                    pacer.written(at + 2 * MiB)
                pacer.end_file()
                os.fsync(handle.fileno())
                pacer.close()
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            written.put(path)
    finally:
        written.put(None)
        reader.join()
    seconds = time.perf_counter() - started
    scratch.close()
    if failures:
        raise failures[0]
    return count * len(piece) / seconds


def _sqlcipher_read_rate(profile: Path) -> float:
    """Bytes per second at which SQLCipher itself reads and authenticates every page
    of the store (`PRAGMA cipher_integrity_check`, in C, on a fresh connection):
    the store's part of any backup reads at most this fast. The better of two."""
    store = Store.open(profile, PassphraseProtector("bench", FAST))
    try:
        best = 0.0
        for _ in range(2):
            connection = store._snapshot_connection()
            try:
                started = time.perf_counter()
                damaged = connection.execute("PRAGMA cipher_integrity_check").fetchall()
                seconds = time.perf_counter() - started
            finally:
                connection.close()
            if damaged:
                raise RuntimeError("the bench store failed SQLCipher's integrity check")
            best = max(best, store.path.stat().st_size / seconds)
        return best
    finally:
        store.close()


def _incremental(profile: Path, folder: Path, messages: int) -> tuple[int, int, int, float, float]:
    """Version 3: a full snapshot; the next after 1% more messages; the next after
    10 new 1 MB attachments. Bytes added by each, seconds of the first two."""
    store = Store.open(profile, PassphraseProtector("bench", FAST))
    try:
        attachments = profile / "attachments"
        started = time.perf_counter()
        first = snapshots.write_snapshot(
            store, folder, KEY, method=fmt.METHOD_KEY, attachments_dir=attachments, keep=5
        )
        first_seconds = time.perf_counter() - started
        new = max(1, messages // 100)
        with store.transaction():
            rows = [
                (
                    1 + number % 51,
                    f"new-{number}",
                    "bob",
                    False,
                    f"new message {number}",
                    10**9 + number,
                    "read",
                )
                for number in range(new)
            ]
            store.executemany(INSERT, rows)
        # The brief's case first: 1% of the store changed, nothing else.
        started = time.perf_counter()
        second = snapshots.write_snapshot(
            store, folder, KEY, method=fmt.METHOD_KEY, attachments_dir=attachments, keep=5
        )
        second_seconds = time.perf_counter() - started
        for number in range(10):
            (attachments / f"new-{number:02d}.bin").write_bytes(os.urandom(MiB))
        third = snapshots.write_snapshot(
            store, folder, KEY, method=fmt.METHOD_KEY, attachments_dir=attachments, keep=5
        )
    finally:
        store.close()
    return first.added, second.added, third.added, first_seconds, second_seconds


def _incremental_child(profile: str, folder: str, messages: int, queue: Any) -> None:
    """`_incremental` in a fresh process, so its peak RSS is the version 3 backups' alone."""
    results = _incremental(Path(profile), Path(folder), messages)
    queue.put((*results, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def _timed_restore(snapshot: Path, target: Path) -> float:
    """Seconds to restore `snapshot`, read from the disk (its folder's page cache
    dropped first, on a quiet disk), into a fresh profile that is then removed."""
    for each in snapshot.parent.parent.rglob("*"):
        if each.is_file():
            snapshots._drop_cache(each)
    _quiet_disk()
    started = time.perf_counter()
    snapshots.restore_snapshot(snapshot, KEY, target, PassphraseProtector("bench", FAST))
    seconds = time.perf_counter() - started
    shutil.rmtree(target, ignore_errors=True)
    return seconds


def _chain_restore(profile: Path, root: Path, length: int) -> tuple[float, float, int]:
    """Version 3: restoring the newest of a chain of `length` snapshots (each after
    1,000 new messages, some read receipts and one new 1 MB attachment, so its pages
    and files are spread over every backup's packs) against restoring one full
    snapshot of the same store, written alone into an empty folder. Seconds of
    each restore, and the packs the chain's folder holds."""
    store = Store.open(profile, PassphraseProtector("bench", FAST))
    attachments = profile / "attachments"
    chain_folder, full_folder = root / "chain-v3", root / "full-v3"
    try:
        latest = None
        for step in range(length):
            if step:
                with store.transaction():
                    rows = [
                        (
                            1 + number % 51,
                            f"chain-{step}-{number}",
                            "bob",
                            False,
                            f"chain message {step} {number}",
                            2 * 10**9 + step * 10_000 + number,
                            "delivered",
                        )
                        for number in range(1_000)
                    ]
                    store.executemany(INSERT, rows)
                    # Older messages change too (read receipts), so earlier pages move on.
                    store.execute(
                        "UPDATE messages SET status = 'read' WHERE id % ? = 0", (97 + step,)
                    )
                (attachments / f"chain-{step:03d}.bin").write_bytes(os.urandom(MiB))
            latest = snapshots.write_snapshot(
                store,
                chain_folder,
                KEY,
                method=fmt.METHOD_KEY,
                attachments_dir=attachments,
                keep=length,
            )
        full = snapshots.write_snapshot(
            store, full_folder, KEY, method=fmt.METHOD_KEY, attachments_dir=attachments, keep=1
        )
    finally:
        store.close()
    assert latest is not None
    packs = sum(1 for each in chain_folder.rglob("*") if each.parent.parent.name == "data")
    # Alternated, best of two each: neither side gets the other's warm caches.
    chain_seconds = full_seconds = float("inf")
    for _ in range(2):
        chain_seconds = min(chain_seconds, _timed_restore(latest.path, root / "restored-chain"))
        full_seconds = min(full_seconds, _timed_restore(full.path, root / "restored-full"))
    return chain_seconds, full_seconds, packs


def run(quick: bool) -> BenchReport:
    report = BenchReport("backup", quick)
    messages = 20_000 if quick else 1_000_000
    attachment_bytes = 32 * MiB if quick else 1024 * MiB
    with tempfile.TemporaryDirectory(prefix="cipherline-bench-backup-", dir=Path.home()) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        profile = _make_profile(root, messages, attachment_bytes)
        build_seconds = time.perf_counter() - started
        _quiet_disk()
        store_bytes = (profile / "store.db").stat().st_size
        expected_size = attachment_bytes + store_bytes
        disk_before = _disk_rate(root, expected_size)
        _quiet_disk()
        folder = root / "cloud"
        folder.mkdir()
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        child = context.Process(
            target=_child, args=(str(profile), str(folder), str(root / "restored"), queue)
        )
        child.start()
        size, backup_seconds, restore_seconds, copy_seconds, peak_kib = queue.get(timeout=3600)
        child.join()
        shutil.rmtree(root / "restored", ignore_errors=True)
        _quiet_disk()
        # The better of two quiet-disk measurements: the limit errs high, not low.
        disk = max(disk_before, _disk_rate(root, size))
        _quiet_disk()
        buffered = _disk_rate(root, size, drop_behind=False)
        _quiet_disk()
        verified = _verified_write_rate(root, size)
        _quiet_disk()
        child = context.Process(
            target=_incremental_child, args=(str(profile), str(root / "cloud-v3"), messages, queue)
        )
        child.start()
        full_bytes, next_bytes, files_bytes, full_seconds, next_seconds, v3_peak_kib = queue.get(
            timeout=3600
        )
        child.join()
        chain_length = 5 if quick else 30
        chain_seconds, single_seconds, chain_packs = _chain_restore(profile, root, chain_length)
        sqlcipher_read = _sqlcipher_read_rate(profile)
    aes = _aes_rate(size)
    # The slowest necessary stage, as a rate over all the backup's bytes: AES-GCM and
    # the disk take every byte; SQLCipher reads only the store's pages. The stage
    # that takes longest bounds the whole.
    stage_seconds = {
        "AES-GCM": size / aes,
        "disk write": size / disk,
        "SQLCipher page reads": store_bytes / sqlcipher_read,
    }
    limit_name = max(stage_seconds, key=lambda name: stage_seconds[name])
    limit = size / stage_seconds[limit_name]
    backup_rate = size / backup_seconds
    restore_rate = size / restore_seconds
    note = (
        f"{messages:,} messages + {attachment_bytes // MiB:,} MiB attachments, "
        f"{size / MiB:,.0f} MiB file"
    )
    report.comparisons += [
        Comparison(
            "backup MB/s", backup_rate / MiB, limit / MiB, "MB/s", limit_name, 0.7, notes=note
        ),
        Comparison(
            "restore MB/s", restore_rate / MiB, limit / MiB, "MB/s", limit_name, 0.7, notes=note
        ),
        Comparison(
            "backup MB/s vs raw AES-256-GCM", backup_rate / MiB, aes / MiB, "MB/s", "AES-GCM"
        ),
        Comparison(
            "backup MB/s vs disk write", backup_rate / MiB, disk / MiB, "MB/s", "disk write"
        ),
    ]
    report.comparisons.append(
        Comparison(
            "v3 full backup MB/s (chunk ids, packs, read-back verify)",
            size / full_seconds / MiB,
            limit / MiB,
            "MB/s",
            limit_name,
            0.7,
            notes=note,
        )
    )
    report.comparisons.append(
        Comparison(
            "v3 full backup MB/s vs the disk writing and reading back every byte",
            size / full_seconds / MiB,
            verified / MiB,
            "MB/s",
            "disk write + read-back",
            None,
            notes=(
                "the read-back a verified backup needs, with no hash and no cipher: "
                "16 MiB files fsync'd, each read back (O_DIRECT) while the next is written"
            ),
        )
    )
    increment = f"+{max(1, messages // 100):,} messages (1% of the store)"
    report.comparisons += [
        Comparison(
            "v3 next backup: bytes written vs the full one",
            next_bytes / MiB,
            full_bytes / MiB,
            "MB",
            "full v3 backup",
            0.02,
            higher_is_better=False,
            notes=f"{increment}; ratio {next_bytes / full_bytes:.4f}",
        ),
        Comparison(
            "v3 next backup: time vs the full one",
            next_seconds,
            full_seconds,
            "s",
            "full v3 backup",
            0.10,
            higher_is_better=False,
            notes=increment,
        ),
    ]
    report.comparisons.append(
        Comparison(
            f"v3 restore of the newest of {chain_length} snapshots vs one full snapshot",
            chain_seconds,
            single_seconds,
            "s",
            "restore of one full v3 snapshot",
            1.2,
            higher_is_better=False,
            notes=(
                f"same content; chain folder {chain_packs:,} packs; each step +1,000 "
                "messages, read receipts, +1 MB attachment"
            ),
        )
    )
    report.figures += [
        Figure(
            "v3 backup after 10 new 1 MB attachments: bytes added",
            files_bytes / MiB,
            "MB",
            notes=f"{files_bytes / full_bytes:.4f} of the full v3 backup",
        ),
        Figure("peak memory, backup + restore process", peak_kib / 1024, "MB", 300),
        Figure("peak memory, v3 backups process", v3_peak_kib / 1024, "MB", 300),
        Figure("plain buffered write into new page cache (not a limit)", buffered / MiB, "MB/s"),
        Figure("SQLCipher reading the store's pages", sqlcipher_read / MiB, "MB/s"),
        Figure("AES-256-GCM", aes / MiB, "MB/s"),
        Figure("disk write with fsync", disk / MiB, "MB/s"),
        Figure("disk write with fsync + read back from the disk", verified / MiB, "MB/s"),
        Figure("backup time", backup_seconds, "s"),
        Figure("restore time", restore_seconds, "s"),
        Figure("time each may take at 70% of the limit", size / (0.7 * limit), "s"),
        Figure(
            "SQLCipher copy of the store alone, under a new key",
            copy_seconds,
            "s",
            notes=f"{store_bytes / MiB:,.0f} MiB at {store_bytes / copy_seconds / MiB:,.0f} MB/s",
        ),
        Figure("building the test profile (not timed above)", build_seconds, "s"),
    ]
    return report
