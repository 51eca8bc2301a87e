"""Version 3 backups on disk: incremental snapshots in a folder of immutable files.

Layout (docs/backup-format.md, "Version 3"), under `<folder>/cipherline-<16 hex>/`:

    data/<2 hex>/<64 hex>   packs of encrypted chunks, named by their SHA-256
    index/<64 hex>          which pack holds which chunk
    snapshots/<64 hex>      one per backup: the store's pages and the attachments
    lock                    held while a backup or prune writes

A sync client only ever sees new files appear (each written to a temporary name,
fsync'd, renamed, the directory fsync'd) and old ones deleted by a prune. The
order of writes is what keeps every completed snapshot restorable whenever a run
is killed: packs, then the index naming them, then the snapshot; a prune deletes
snapshots, then writes one index of what is still used, then deletes the old
indexes and the unused packs. What a killed run leaves (temporary files, packs no
index names, indexes of packs no snapshot uses) is removed by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import mmap
import os
import queue
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import NamedTuple

from app.backup import engine
from app.backup import format_v3 as v3
from app.backup.errors import (
    BackupCancelled,
    BackupError,
    CorruptBackup,
    NotEnoughSpace,
    ProfileNotEmpty,
)
from app.backup.page_cache import CACHE_NAME, MARK_LENGTH, PageCache
from app.crypto import (
    SQLCIPHER_RESERVE,
    SQLCIPHER_SALT_LENGTH,
    DecryptionError,
    ReusableAead,
    SqlcipherPages,
    random_bytes,
)
from app.store import Protector, Store, StoreError
from app.store.database import DB_FILE_NAME, DatabaseImageFile, FrozenStoreFile
from app.store.durability import WritebackPacer, fsync_directory

# Attachment files are cut into fixed pieces: each is a ciphertext under its own
# key that never changes once written, so content-defined cut points (FastCDC,
# which version 3 writers used until 2026-12) would find nothing to share and
# cost a pass over every byte. 1 MiB, not more: a restore reading 4 MiB blobs
# ran at half the speed here (each large read waits for the disk whole). The
# store is cut at page boundaries: a page is the unit SQLite changes, so a
# message added costs the few pages it touched.
FILE_CHUNK = 1 << 20
READ_PAGES = 256
# A restore asks the disk for this many attachment chunks ahead of the one it
# decrypts and writes.
PREFETCH_CHUNKS = 8
WRITE_PIECE = 2 << 20
# A pack closes once it reaches PACK_TARGET, so its buffer holds at most that,
# one more chunk (up to MAX_CHUNK) sealed, and the header.
PACK_CAPACITY = v3.MAX_HEADER_LENGTH + v3.PACK_TARGET + v3.MAX_CHUNK + v3.TAG_LENGTH
# One pack being sealed, one being written, one being read back: the pipeline's
# depth, and its memory (anonymous maps, touched only as far as packs fill them).
PACK_BUFFERS = 3
LOCK_NAME = "lock"
LOCK_STALE_SECONDS = 15 * 60
LOCK_REFRESH_SECONDS = 60
TMP_SUFFIX = ".tmp"
# A kept pack is rewritten by a prune once more than this share of its bytes is
# chunks no kept snapshot uses: restic's default (--max-unused 50% per pack is
# its "repack small/mostly unused packs" rule); lower rewrites more for little.
REPACK_UNUSED_SHARE = 0.5
# Index files are merged into one when a prune deletes or repacks something, or
# once more than this many have gathered: a backup that removes nothing then adds
# one small index instead of rewriting the whole of it (restic merges on prune too).
INDEX_FILES_BEFORE_MERGE = 16

Progress = Callable[[int, int], None]
Cancelled = Callable[[], bool]
Clock = Callable[[], int]  # nanoseconds since the epoch, like time.time_ns
# Called after every file the repository gains or loses; tests make it crash there.
Checkpoint = Callable[[str], None]


def _no_checkpoint(_what: str) -> None:
    return None


class FolderLocked(BackupError):
    exit_code = 1


# ---- the repository -----------------------------------------------------------------


class Repository:
    def __init__(self, root: Path, checkpoint: Checkpoint = _no_checkpoint) -> None:
        self.root = root
        self.checkpoint = checkpoint

    @staticmethod
    def for_key(folder: Path, key: bytes, checkpoint: Checkpoint = _no_checkpoint) -> Repository:
        return Repository(folder / v3.folder_name(key), checkpoint)

    @staticmethod
    def of_snapshot(path: Path) -> Repository:
        return Repository(path.parent.parent)

    def create(self) -> None:
        for sub in ("data", "index", "snapshots"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    def pack_path(self, pack_id: bytes) -> Path:
        name = pack_id.hex()
        return self.root / "data" / name[:2] / name

    def snapshot_paths(self) -> list[Path]:
        return _named_files(self.root / "snapshots")

    def index_paths(self) -> list[Path]:
        return _named_files(self.root / "index")

    def pack_ids(self) -> set[bytes]:
        found: set[bytes] = set()
        for folder in _subfolders(self.root / "data"):
            found.update(bytes.fromhex(p.name) for p in _named_files(folder))
        return found

    def write_file(self, folder: Path, data: bytes | memoryview, *, fan_out: bool = False) -> Path:
        """`data` under its SHA-256 name: temp, fsync, rename, fsync the folder.
        With `fan_out`, in the subfolder named by the name's first 2 hex digits."""
        name = hashlib.sha256(data).hexdigest()
        if fan_out:
            folder = folder / name[:2]
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = folder / name
        temp = folder / f".{random_bytes(8).hex()}{TMP_SUFFIX}"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb", buffering=0) as handle, memoryview(data) as view:
                # In pieces, each one's writeback started and the older ones
                # dropped behind: one 16 MiB write then fsync waits for the disk
                # twice (throttled while dirtying, then flushing).
                pacer = WritebackPacer(stretch=WRITE_PIECE)
                try:
                    pacer.start_file(handle.fileno())
                    for start in range(0, len(view), WRITE_PIECE):
                        handle.write(view[start : start + WRITE_PIECE])
                        pacer.written(min(start + WRITE_PIECE, len(view)))
                    pacer.end_file()
                finally:
                    pacer.close()
                os.fsync(handle.fileno())
                with contextlib.suppress(OSError, AttributeError):
                    # Clean once fsync'd, so dropped at once: the next file's
                    # writes then recycle these pages (taking fresh page-cache
                    # pages ran at a third of the speed here), and a backup's
                    # gigabytes do not evict the user's cached files. A read-back
                    # reads the disk either way.
                    os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_directory(folder)
        self.checkpoint(f"wrote {folder.name}/{target.name[:8]}")
        return target

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        fsync_directory(path.parent)
        self.checkpoint(f"removed {path.parent.name}/{path.name[:8]}")

    def remove_temporaries(self) -> int:
        """Temporary files a killed run left (only called with the lock held)."""
        removed = 0
        for temp in self.root.rglob(f".*{TMP_SUFFIX}"):
            temp.unlink(missing_ok=True)
            removed += 1
        return removed


def _named_files(folder: Path) -> list[Path]:
    """Files named by 64 hex digits (skips temporaries and strangers' files)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return sorted(
            p
            for p in folder.iterdir()
            if len(p.name) == 64 and all(c in "0123456789abcdef" for c in p.name)
        )
    return []


def _subfolders(folder: Path) -> list[Path]:
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        return sorted(p for p in folder.iterdir() if p.is_dir() and len(p.name) == 2)
    return []


# ---- the lock -------------------------------------------------------------------------


class Lock:
    """One writer at a time per repository, across processes and devices.

    A lock is stale when its holder on this machine is gone, or when nobody has
    refreshed it (its mtime) for LOCK_STALE_SECONDS: a device that lost power
    cannot block every other device for ever. It holds no name of the machine,
    only a hash of it.
    """

    def __init__(self, repo: Repository) -> None:
        self.path = repo.root / LOCK_NAME
        self._refreshed = 0.0

    def acquire(self) -> None:
        host = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:16]
        body = json.dumps({"host": host, "pid": os.getpid(), "since": int(time.time())})
        for _attempt in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                if not self._stale(host):
                    raise FolderLocked(
                        "another backup or clean-up is writing to this folder right now; "
                        "try again in a few minutes"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            self._refreshed = time.monotonic()
            return
        raise FolderLocked("could not lock the backup folder; try again in a few minutes")

    def _stale(self, host: str) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return True
        if age > LOCK_STALE_SECONDS:
            return True
        if holder.get("host") == host and isinstance(holder.get("pid"), int):
            return not _process_alive(holder["pid"])
        return False

    def refresh(self) -> None:
        if time.monotonic() - self._refreshed > LOCK_REFRESH_SECONDS:
            with contextlib.suppress(OSError):
                os.utime(self.path)
            self._refreshed = time.monotonic()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- retention ------------------------------------------------------------------------


@dataclass(frozen=True)
class Retention:
    """Which snapshots a prune keeps: the union of each rule, as restic's
    `--keep-last/--keep-daily/--keep-weekly/--keep-monthly`. A daily rule of 7
    keeps the newest snapshot of each of the 7 newest days that have one (days
    without a backup do not count), in local time; weeks are ISO weeks. The
    newest snapshot is always kept, whatever the rules say."""

    last: int = 2
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def __post_init__(self) -> None:
        for name in ("last", "daily", "weekly", "monthly"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"keep {name} must be a whole number, 0 or more")

    def describe(self) -> str:
        parts = [f"the newest {max(self.last, 1)}"]
        for count, unit in ((self.daily, "day"), (self.weekly, "week"), (self.monthly, "month")):
            if count:
                parts.append(f"one a {unit} for {count} {unit}{'s' if count > 1 else ''}")
        return ", ".join(parts)


def kept_times(created_ns: Iterable[int], rule: Retention, tz: tzinfo | None = None) -> set[int]:
    """The creation times (ns) `rule` keeps among `created_ns`; `tz` is the zone
    days start in (None: this machine's)."""
    newest_first = sorted(set(created_ns), reverse=True)
    kept = set(newest_first[: max(rule.last, 1)])

    def bucket_of(unit: str, stamp: int) -> tuple[int, ...]:
        when = datetime.fromtimestamp(stamp / 1e9, tz=tz)
        if unit == "daily":
            return (when.year, when.month, when.day)
        if unit == "weekly":
            iso = when.isocalendar()
            return (iso[0], iso[1])
        return (when.year, when.month)

    for unit, count in (("daily", rule.daily), ("weekly", rule.weekly), ("monthly", rule.monthly)):
        seen: set[tuple[int, ...]] = set()
        for stamp in newest_first:
            if len(seen) >= count:
                break
            bucket = bucket_of(unit, stamp)
            if bucket not in seen:
                seen.add(bucket)
                kept.add(stamp)
    return kept


# ---- reading what the folder holds ----------------------------------------------------


class Location(NamedTuple):
    """Where a chunk is. A tuple: every backup makes one per chunk of the folder."""

    pack_id: bytes
    number: int  # blob number in the pack: its nonce
    offset: int
    length: int


@dataclass
class LoadedIndex:
    chunks: dict[bytes, Location]
    files: dict[Path, list[v3.PackEntry]]


def load_index(repo: Repository, key: bytes, *, existing: set[bytes] | None = None) -> LoadedIndex:
    """Every index file's entries; with `existing`, entries of missing packs are left out."""
    chunks: dict[bytes, Location] = {}
    files: dict[Path, list[v3.PackEntry]] = {}
    for path in repo.index_paths():
        try:
            _header, plain = v3.open_body(key, path.read_bytes(), v3.KIND_INDEX)
            packs = v3.decode_index(plain)
        except CorruptBackup as error:
            raise CorruptBackup(error.offset, f"index file {path.name[:12]}…: {error}") from None
        files[path] = packs
        for pack in packs:
            pack_id = pack.pack_id
            if existing is not None and pack_id not in existing:
                continue
            for number, (chunk, offset, length) in enumerate(pack.blobs):
                if chunk not in chunks:
                    chunks[chunk] = Location(pack_id, number, offset, length)
    return LoadedIndex(chunks, files)


def read_snapshot(path: Path, key: bytes) -> tuple[v3.Header, v3.Snapshot]:
    header, plain = v3.open_body(key, path.read_bytes(), v3.KIND_SNAPSHOT)
    return header, v3.Snapshot.decode(plain)


class PackReader:
    """Opens blobs of packs; each pack's header and key are checked once."""

    def __init__(self, repo: Repository, key: bytes) -> None:
        self.repo = repo
        self.key = key
        self._open: dict[bytes, tuple[int, ReusableAead]] = {}

    def blob(self, chunk_id: bytes, where: Location) -> bytes:
        fd, aead = self._pack(where.pack_id)
        sealed = os.pread(fd, where.length, where.offset)
        if len(sealed) != where.length:
            raise CorruptBackup(where.offset, f"pack {where.pack_id.hex()[:12]}… is cut short")
        try:
            return aead.open(v3.blob_nonce(where.number), sealed, chunk_id)
        except DecryptionError:
            raise CorruptBackup(
                where.offset, f"a chunk in pack {where.pack_id.hex()[:12]}… fails authentication"
            ) from None

    def prefetch(self, where: Location) -> None:
        """Asks the kernel to start reading a blob that will be wanted soon, so the
        disk works while the caller decrypts and writes the ones before it."""
        fd, _aead = self._pack(where.pack_id)
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, where.offset, where.length, os.POSIX_FADV_WILLNEED)

    def _pack(self, pack_id: bytes) -> tuple[int, ReusableAead]:
        if pack_id in self._open:
            return self._open[pack_id]
        path = self.repo.pack_path(pack_id)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptBackup(0, f"pack {pack_id.hex()[:12]}… is missing") from None
        header, _length = v3.Header.parse(os.pread(fd, v3.MAX_HEADER_LENGTH, 0), v3.KIND_PACK)
        header.check_key(self.key)
        entry = (fd, ReusableAead(header.file_key(self.key)))
        self._open[pack_id] = entry
        return entry

    def close(self) -> None:
        for fd, _aead in self._open.values():
            os.close(fd)
        self._open.clear()


# ---- writing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _SealedPack:
    """A pack sealed in memory, on its way to the disk."""

    buffer: mmap.mmap
    length: int
    header: bytes
    blobs: tuple[v3.BlobEntry, ...]
    aead: ReusableAead


class _PackWriter:
    """Seals new chunks into packs of about PACK_TARGET bytes.

    Each blob is sealed straight into a reused pack buffer (no copy, no fresh
    memory: on a virtual machine first-touch pages cost more than the cipher).
    With `write_behind`, two threads of its own take each finished pack: one
    names, writes and fsyncs it, the other reads it back from the disk (page
    cache dropped) and authenticates every blob, while the caller goes on
    chunking and sealing the next. Hashing, the cipher and the disk release the
    GIL, so on two cores the first backup of a large history takes the time of
    its slowest part instead of the sum. PACK_BUFFERS bound the memory and how
    far the caller runs ahead. `finish()` waits and raises what went wrong;
    packs keep their order."""

    def __init__(
        self,
        repo: Repository,
        key: bytes,
        method: int,
        record_id: bytes,
        clock: Clock = time.time_ns,
        *,
        write_behind: bool = False,
    ) -> None:
        self.repo, self.key, self.method, self.record_id = repo, key, method, record_id
        self.clock = clock
        self.written: list[v3.PackEntry] = []
        self.bytes = 0
        self._failure: BaseException | None = None
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(PACK_BUFFERS if write_behind else 1):
            self._free.put(mmap.mmap(-1, PACK_CAPACITY))
        self._to_write: queue.Queue[_SealedPack | None] | None = None
        self._to_check: queue.Queue[tuple[bytes, _SealedPack] | None] | None = None
        self._threads: list[threading.Thread] = []
        if write_behind:
            self._to_write, self._to_check = queue.Queue(), queue.Queue()
            self._threads = [
                threading.Thread(target=self._write_behind, name="pack-writer", daemon=True),
                threading.Thread(target=self._check_behind, name="pack-checker", daemon=True),
            ]
            for thread in self._threads:
                thread.start()
        self._reset()

    def _reset(self) -> None:
        self._header: bytes | None = None
        self._buffer: mmap.mmap | None = None
        self._view: memoryview | None = None
        self._blobs: list[v3.BlobEntry] = []
        self._size = 0
        self._aead: ReusableAead | None = None

    def add(self, chunk_id: bytes, plain: bytes | memoryview) -> None:
        if self._header is None:
            header = v3.new_header(
                self.key,
                v3.KIND_PACK,
                self.method,
                record_id=self.record_id,
                created_ns=self.clock(),
            )
            self._header = header.to_bytes()
            self._aead = ReusableAead(header.file_key(self.key))
            self._buffer = self._take_buffer()
            self._view = memoryview(self._buffer)
            self._size = len(self._header)
            self._view[: self._size] = self._header
        assert self._aead is not None
        assert self._view is not None
        # A pack is closed once it reaches PACK_TARGET, so the buffer
        # (PACK_CAPACITY) always has room for one more chunk of up to MAX_CHUNK.
        end = self._size + len(plain) + v3.TAG_LENGTH
        self._aead.seal_into(
            v3.blob_nonce(len(self._blobs)), plain, chunk_id, self._view[self._size : end]
        )
        self._blobs.append(v3.BlobEntry(chunk_id, self._size, end - self._size))
        self._size = end
        if self._size >= v3.PACK_TARGET:
            self.flush()

    def flush(self) -> None:
        if self._header is None:
            return
        assert self._buffer is not None
        assert self._aead is not None
        assert self._view is not None
        self._view.release()
        sealed = _SealedPack(self._buffer, self._size, self._header, tuple(self._blobs), self._aead)
        self.bytes += sealed.length
        self._reset()
        if self._to_write is None:
            try:
                self.written.append(v3.PackEntry(self._write(sealed), sealed.blobs))
            finally:
                self._free.put(sealed.buffer)
            return
        self._raise_failure()
        self._to_write.put(sealed)

    def finish(self) -> None:
        """Every pack written (and, written behind, read back); raises a failure."""
        self.close()
        self._raise_failure()

    def close(self) -> None:
        """Stops the threads, if any, once what they were given is done."""
        if self._threads and self._to_write is not None:
            self._to_write.put(None)
            for thread in self._threads:
                thread.join()
            self._threads = []
        if self._view is not None:
            self._view.release()
            self._view = None
        while True:
            try:
                buffer = self._free.get_nowait()
            except queue.Empty:
                break
            # A failure's traceback may still hold a view of it; then the
            # collector unmaps it once that is gone.
            with contextlib.suppress(BufferError):
                buffer.close()

    @property
    def read_back(self) -> bool:
        """Whether each pack was already read back from the disk as it was written."""
        return self._to_write is not None

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _take_buffer(self) -> mmap.mmap:
        # The threads hand every buffer back, even after a failure, so this
        # never waits for ever; a failure is raised here rather than after it.
        while True:
            self._raise_failure()
            try:
                return self._free.get(timeout=0.5)
            except queue.Empty:
                continue

    def _write(self, sealed: _SealedPack) -> bytes:
        with memoryview(sealed.buffer) as view:
            path = self.repo.write_file(
                self.repo.root / "data", view[: sealed.length], fan_out=True
            )
        return bytes.fromhex(path.name)

    def _write_behind(self) -> None:
        assert self._to_write is not None
        assert self._to_check is not None
        while (sealed := self._to_write.get()) is not None:
            try:
                if self._failure is None:
                    self._to_check.put((self._write(sealed), sealed))
                    continue
            except BaseException as error:  # noqa: BLE001 - raised on the caller's thread
                self._failure = error
            self._free.put(sealed.buffer)
        self._to_check.put(None)

    def _check_behind(self) -> None:
        assert self._to_check is not None
        scratch = mmap.mmap(-1, PACK_CAPACITY + v3.MAX_CHUNK)
        while (item := self._to_check.get()) is not None:
            pack_id, sealed = item
            try:
                if self._failure is None:
                    _read_back_pack(self.repo, pack_id, sealed, scratch)
                    self.written.append(v3.PackEntry(pack_id, sealed.blobs))
            except BaseException as error:  # noqa: BLE001 - raised on the caller's thread
                self._failure = error
            finally:
                # Only now: the read-back compares the disk with the header in it.
                self._free.put(sealed.buffer)
        # A failure's traceback may still hold a view of it; then the collector
        # unmaps it once that is gone.
        with contextlib.suppress(BufferError):
            scratch.close()


def _read_back_pack(
    repo: Repository, pack_id: bytes, sealed: _SealedPack, scratch: mmap.mmap
) -> None:
    """A pack just written, read back from the disk (page cache dropped): it is
    exactly what was written, byte for byte, hence its SHA-256 is its name,
    without hashing it again: its length matches, its clear header equals the
    one written, and every blob, which with the header covers every byte in
    turn, authenticates under the pack's key (its id is the AD, so a blob moved
    or given another id fails too). The ids were computed from the plaintext
    moments ago."""
    name = f"pack {pack_id.hex()[:12]}…"
    length = sealed.length
    with memoryview(scratch) as view:
        # The file is read into the scratch buffer's first PACK_CAPACITY bytes (one
        # byte more than written, so a longer file shows), the blobs open after it.
        data, plain = view[:PACK_CAPACITY], view[PACK_CAPACITY:]
        got = _read_from_disk(repo.pack_path(pack_id), data, length + 1)
        if got != length:
            raise CorruptBackup(0, f"{name} does not read back as written (length)")
        head = len(sealed.header)
        if data[:head] != sealed.header:
            raise CorruptBackup(0, f"{name} does not read back as written (header)")
        end = head
        for number, blob in enumerate(sealed.blobs):
            if blob.offset != end:
                raise CorruptBackup(blob.offset, f"{name} does not hold what its index says")
            end = blob.offset + blob.length
            try:
                sealed.aead.open_into(
                    v3.blob_nonce(number),
                    data[blob.offset : end],
                    blob.chunk_id,
                    plain[: blob.length - v3.TAG_LENGTH],
                )
            except DecryptionError:
                raise CorruptBackup(
                    blob.offset, f"a chunk in {name} fails authentication when read back"
                ) from None
        if end != length:
            raise CorruptBackup(end, f"{name} has bytes its index does not name")


_DIRECT_BLOCK = 4096


def _read_from_disk(path: Path, into: memoryview, limit: int) -> int:
    """Up to `limit` bytes of `path` from the disk, not the page cache, into
    `into` (page-aligned, with room for `limit` rounded up to 4 KiB); the count.
    O_DIRECT where the file system takes it: the disk's bytes straight into
    `into`, with none of the page cache's copying (a third of a read-back's CPU);
    elsewhere the cached pages are dropped first, and again after."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECT", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if flags == os.O_RDONLY:
            raise
        fd, flags = os.open(path, os.O_RDONLY), os.O_RDONLY
    try:
        if flags != os.O_RDONLY:
            with contextlib.suppress(OSError):
                return _read_direct(fd, into[: -(-limit // _DIRECT_BLOCK) * _DIRECT_BLOCK])
            # EINVAL: this file system opened it O_DIRECT but cannot read so.
            os.close(fd)
            fd = os.open(path, os.O_RDONLY)
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        got = _read_at(fd, into[:limit], 0)
        with contextlib.suppress(OSError, AttributeError):
            # Read once, not to be kept: the user's files keep the page cache.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return got
    finally:
        os.close(fd)


# Reads of a read-back: a virtual disk served 4 MiB reads at 920 MB/s and 16 MiB
# ones at 760 MB/s here (O_DIRECT, one reader), and two 4 MiB reads at once, while
# the next pack was written, 30-40% more than one.
READ_PIECE = 4 << 20


def _read_direct(fd: int, into: memoryview) -> int:
    """`into` filled from the start of `fd` (opened O_DIRECT), its two halves read
    at once (the second on a helper thread); the count, short at the end of the
    file."""
    middle = len(into) // 2 // READ_PIECE * READ_PIECE
    if not middle:
        return _read_at(fd, into, 0, direct=True)
    second: list[int | BaseException] = []

    def read_second_half() -> None:
        try:
            second.append(_read_at(fd, into[middle:], middle, direct=True))
        except BaseException as error:  # noqa: BLE001 - raised on the reading thread
            second.append(error)

    helper = threading.Thread(target=read_second_half, name="pack-checker-2", daemon=True)
    helper.start()
    try:
        first = _read_at(fd, into[:middle], 0, direct=True)
    finally:
        helper.join()
    (rest,) = second
    if isinstance(rest, BaseException):
        raise rest
    return first if first < middle else middle + rest


def _read_at(fd: int, into: memoryview, offset: int, *, direct: bool = False) -> int:
    got = 0
    while got < len(into):
        count = os.preadv(fd, [into[got : got + READ_PIECE]], offset + got)
        got += count
        # An O_DIRECT read that ends off a block boundary reached the end of the
        # file (and the next one would be refused as unaligned).
        if count == 0 or (direct and count % _DIRECT_BLOCK):
            break
    return got


def _image_pages(image: DatabaseImageFile) -> Iterator[tuple[int, bytes]]:
    """The scratch image's pages in plaintext, in memory only (see SqlcipherPages)."""
    size = image.page_size
    with image.path.open("rb") as handle:
        salt = handle.read(SQLCIPHER_SALT_LENGTH)
        handle.seek(0)
        codec = SqlcipherPages(image.key, salt, size)
        number = 0
        while block := handle.read(size * READ_PAGES):
            with memoryview(block) as view:
                for start in range(0, len(block), size):
                    number += 1
                    try:
                        yield number, codec.decrypt(number, view[start : start + size])
                    except DecryptionError:
                        raise BackupError(
                            "the store's copy could not be read back; check the disk"
                        ) from None


def _file_pages(
    frozen: FrozenStoreFile,
    key: bytes,
    put: Callable[[memoryview], bytes],
    reuse: Callable[[bytes, int], bool],
    tick: Callable[[], None],
) -> tuple[PageCache, list[bytes], int]:
    """The chunk ids of the store file's pages, and its reserve: a page whose mark
    is unchanged since the last backup keeps its chunk (see app.backup.page_cache);
    the others are decrypted in memory and put."""
    size = frozen.page_size
    pages: list[bytes] = []
    reserve = 0
    with frozen.path.open("rb") as handle:
        salt = handle.read(SQLCIPHER_SALT_LENGTH)
        handle.seek(0)
        cache = PageCache.load(frozen.path.parent / CACHE_NAME, key, salt, size)
        codec = SqlcipherPages(frozen.key, salt, size, hmac="sha512")
        mark_at = size - codec.reserve
        number = 0
        while block := handle.read(size * READ_PAGES):
            if len(block) % size:
                raise BackupError("the store's file ends inside a page; check the disk")
            with memoryview(block) as view:
                for start in range(0, len(block), size):
                    number += 1
                    mark = block[start + mark_at : start + mark_at + MARK_LENGTH]
                    chunk = cache.chunk_for(number, mark) if number > 1 else None
                    if chunk is None or not reuse(chunk, size - reserve):
                        page = view[start : start + size]
                        if number == 1:
                            plain = _usable_plaintext(codec, number, page, reserve)
                            reserve = size - len(plain)
                        else:
                            plain = _page_body(codec, number, page, size - reserve)
                        chunk = put(plain)
                        cache.remember(number, mark, chunk)
                    pages.append(chunk)
                    if number % 4096 == 0:
                        tick()
    cache.truncate(number)
    return cache, pages, reserve


def _page_body(codec: SqlcipherPages, number: int, page: memoryview, usable: int) -> memoryview:
    """Page `number` (not the first) decrypted, its first `usable` bytes."""
    try:
        body = codec.decrypt_body(number, page)
    except DecryptionError:
        raise BackupError("the store's file could not be read; check the disk") from None
    return memoryview(body)[:usable]


def _usable_plaintext(
    codec: SqlcipherPages, number: int, page: memoryview, reserve: int
) -> memoryview:
    """Page `number` decrypted, without its reserve (the first page says how large
    that is). The first page is marked a rollback-journal database, as the scratch
    image is: the snapshot is one self-contained file, with no log beside it."""
    try:
        plain = bytearray(codec.decrypt(number, page))
    except DecryptionError:
        raise BackupError("the store's file could not be read; check the disk") from None
    if number == 1:
        reserve = plain[20]
        if reserve < codec.reserve:
            raise BackupError("the store has pages this backup cannot keep")
        plain[18] = plain[19] = 1
    return memoryview(plain)[: len(plain) - reserve]


def _image_pages_of(
    store: Store, put: Callable[[memoryview], bytes], tick: Callable[[], None]
) -> tuple[list[bytes], int, int, int]:
    """The chunk ids of a scratch image's pages, its reserve, schema and page size:
    for when the store's own file cannot be held still (see Store.frozen_file)."""
    image = store.export_image()
    try:
        reserve = 0
        pages: list[bytes] = []
        for number, plain in _image_pages(image):
            if number == 1:
                reserve = plain[20]
                if reserve < SQLCIPHER_RESERVE:
                    raise BackupError("the store's copy has pages this backup cannot keep")
            pages.append(put(memoryview(plain)[: image.page_size - reserve]))
            if number % 4096 == 0:
                tick()
        return pages, reserve, image.schema, image.page_size
    finally:
        image.discard()


@dataclass(frozen=True)
class SnapshotInfo:
    path: Path
    created_ns: int
    total: int
    added: int
    verified_at: int | None


def write_snapshot(
    store: Store,
    folder: Path,
    key: bytes,
    *,
    method: int,
    record_id: bytes = b"",
    attachments_dir: Path | None = None,
    keep: int = 2,
    retention: Retention | None = None,
    progress: Progress = engine._no_progress,
    cancelled: Cancelled = engine._never,
    checkpoint: Checkpoint = _no_checkpoint,
    clock: Clock = time.time_ns,
) -> SnapshotInfo:
    """Adds a snapshot to `folder`'s repository, reads it back, then prunes by
    `retention` (or, without it, to the newest `keep`). `clock` dates the files:
    tests fabricate a history with it."""
    rule = retention or Retention(last=keep)
    repo = Repository.for_key(folder, key, checkpoint)
    repo.create()
    files = engine._attachment_files(attachments_dir)
    free = shutil.disk_usage(repo.root).free
    if free < engine.SPACE_MARGIN:
        raise NotEnoughSpace(
            f"the folder has {free / 2**20:,.0f} MB free; the previous backups are untouched"
        )
    lock = Lock(repo)
    lock.acquire()
    packs: _PackWriter | None = None
    file_packs: _PackWriter | None = None
    try:
        repo.remove_temporaries()
        existing = repo.pack_ids()
        index = load_index(repo, key, existing=existing)
        newest = _newest_snapshot(repo, key)
        parent = newest[1] if newest else None
        created_ns = clock()
        id_key = v3.chunk_id_key(key)
        # The store's pages and the attachment files go into packs of their own,
        # on two threads: the pages are many small pieces of Python work, the
        # files a few large ones the hash and the cipher do without the GIL, so
        # on two cores the one hides the other. Pages and files in separate packs
        # also keep what changes (pages) apart from what never does (files) when
        # a prune weighs which packs to rewrite.
        packs = _PackWriter(repo, key, method, record_id, clock, write_behind=True)
        file_packs = _PackWriter(repo, key, method, record_id, clock, write_behind=True)
        known = index.chunks
        new: set[bytes] = set()
        new_lock = threading.Lock()
        expected = engine.estimate_size(store, files)
        # Bytes done, per thread (each counts its own: no lock, no lost update).
        done = {"pages": 0, "files": 0}

        def putter(writer: _PackWriter, part: str) -> Callable[[bytes | memoryview], bytes]:
            def put(plain: bytes | memoryview) -> bytes:
                chunk = v3.chunk_id(id_key, plain)
                with new_lock:
                    fresh = chunk not in known and chunk not in new
                    if fresh:
                        new.add(chunk)
                done[part] += len(plain)
                if fresh:
                    writer.add(chunk, plain)
                return chunk

            return put

        def reuse(chunk: bytes, length: int) -> bool:
            # Only pages are reused this way; `new` only grows, and a chunk the
            # other thread is adding right now just means this page is put too.
            if chunk not in known and chunk not in new:
                return False
            done["pages"] += length
            return True

        def tick() -> None:
            _tick(progress, cancelled, lock, sum(done.values()), expected)

        previous = {entry.path: entry for entry in parent.files} if parent else {}
        assert attachments_dir is not None or not files
        relatives = [path.relative_to(attachments_dir).as_posix() for path in files]  # type: ignore[arg-type]
        for relative in relatives:
            v3.check_path(relative)
        put_file = putter(file_packs, "files")
        file_job = _Background(
            lambda stop: _file_entries(
                files, relatives, previous, known=known, put=put_file, stop=stop
            )
        )
        put_page = putter(packs, "pages")
        try:
            cache: PageCache | None = None
            with store.frozen_file() as frozen:
                if frozen is not None:
                    cache, pages, reserve = _file_pages(frozen, key, put_page, reuse, tick)
                    schema, page_size = frozen.schema, frozen.page_size
            if cache is None:
                pages, reserve, schema, page_size = _image_pages_of(store, put_page, tick)
            packs.flush()
            while not file_job.wait(0.25):
                tick()
            entries = file_job.result()
        finally:
            file_job.stop()
        file_packs.flush()
        packs.finish()
        file_packs.finish()
        packs.written += file_packs.written
        packs.bytes += file_packs.bytes
        added = packs.bytes
        new_index = None
        if packs.written:
            body = v3.encode_index(packs.written)
            head = v3.new_header(
                key, v3.KIND_INDEX, method, record_id=record_id, created_ns=created_ns
            )
            new_index = repo.write_file(repo.root / "index", v3.seal_body(key, head, body))
            added += new_index.stat().st_size
        snapshot = v3.Snapshot(schema, page_size, reserve, tuple(pages), tuple(entries))
        locations = dict(known)
        for pack in packs.written:
            for number, blob in enumerate(pack.blobs):
                locations.setdefault(
                    blob.chunk_id, Location(pack.pack_id, number, blob.offset, blob.length)
                )
        total = _referenced_bytes(repo, snapshot, locations)
        body = snapshot.encode()
        head = v3.new_header(
            key,
            v3.KIND_SNAPSHOT,
            method,
            record_id=record_id,
            created_ns=created_ns,
            flags=v3.FLAG_ATTACHMENTS if entries else 0,
            total=total,
            added=added + len(body) + v3.MAX_HEADER_LENGTH,
        )
        path = repo.write_file(repo.root / "snapshots", v3.seal_body(key, head, body))
        progress(sum(done.values()), sum(done.values()))
        # Read back what this run wrote, from the disk, and authenticate all of it.
        verify_written(
            repo,
            key,
            path,
            packs.written,
            new_index,
            known=set(known),
            packs_read_back=packs.read_back,
        )
        verified_at = int(time.time())
        if cache is not None:
            cache.save(store.path.parent / CACHE_NAME, key)
        # What the folder's indexes now hold, as load_index would read it (the
        # lock keeps it so): the prune need not read and decode every index again.
        index_files = dict(index.files)
        if new_index is not None:
            index_files[new_index] = packs.written
        loaded = LoadedIndex(locations, dict(sorted(index_files.items())))
        # The new snapshot and its parent need not be read and decoded again either.
        decoded = {path: snapshot} | (dict([newest]) if newest else {})
        _prune_locked(repo, key, rule, clock=clock, lock=lock, index=loaded, decoded=decoded)
    finally:
        for writer in (packs, file_packs):
            if writer is not None:
                writer.close()
        lock.release()
    return SnapshotInfo(path, created_ns, total, head.added, verified_at)


def _tick(progress: Progress, cancelled: Cancelled, lock: Lock, done: int, total: int) -> None:
    progress(done, max(total, done))
    lock.refresh()
    if cancelled():
        raise BackupCancelled


def _file_entry(
    path: Path,
    relative: str,
    previous: v3.FileEntry | None,
    *,
    known: dict[bytes, Location],
    put: Callable[[bytes | memoryview], bytes],
    buffer: bytearray,
) -> v3.FileEntry:
    """An attachment's chunks, read in pieces of len(buffer) bytes. Attachments
    never change once written (each is a ciphertext under its own key), so one of
    the same name and size as in the newest snapshot, whose chunks are all still
    in the folder, is not read again."""
    with path.open("rb", buffering=0) as handle:
        size = os.fstat(handle.fileno()).st_size
        if (
            previous is not None
            and previous.size == size
            and all(chunk in known for chunk in previous.chunks)
        ):
            return previous
        chunks = []
        length = 0
        with memoryview(buffer) as view:
            while count := handle.readinto(view):
                chunks.append(put(view[:count]))
                length += count
    if length != size:
        raise BackupError(f"the attachment {relative} changed while it was being backed up")
    return v3.FileEntry(relative, size, tuple(chunks))


class _Background:
    """`work(stop)` on a thread of its own; `stop` is an Event it checks between
    pieces, set by `stop()` (which then waits for it to end)."""

    def __init__(self, work: Callable[[threading.Event], list[v3.FileEntry]]) -> None:
        self._stop = threading.Event()
        self._result: list[v3.FileEntry] = []
        self._failure: BaseException | None = None

        def run() -> None:
            try:
                self._result = work(self._stop)
            except BaseException as error:  # noqa: BLE001 - raised on the caller's thread
                self._failure = error

        self._thread = threading.Thread(target=run, name="backup-files", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> bool:
        """Whether the work has ended, after waiting at most `timeout` seconds."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def result(self) -> list[v3.FileEntry]:
        self._thread.join()
        if self._failure is not None:
            raise self._failure
        return self._result

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _file_entries(
    files: list[Path],
    relatives: list[str],
    previous: dict[str, v3.FileEntry],
    *,
    known: dict[bytes, Location],
    put: Callable[[bytes | memoryview], bytes],
    stop: threading.Event,
) -> list[v3.FileEntry]:
    buffer = bytearray(FILE_CHUNK)

    def put_unless_stopped(plain: bytes | memoryview) -> bytes:
        if stop.is_set():
            raise BackupCancelled
        return put(plain)

    entries = []
    for path, relative in zip(files, relatives, strict=True):
        if stop.is_set():
            raise BackupCancelled
        entry = _file_entry(
            path,
            relative,
            previous.get(relative),
            known=known,
            put=put_unless_stopped,
            buffer=buffer,
        )
        entries.append(entry)
    return entries


def _referenced_bytes(repo: Repository, snapshot: v3.Snapshot, where: dict[bytes, Location]) -> int:
    """Bytes of every pack the snapshot uses: what restoring it downloads."""
    packs = {where[chunk].pack_id for chunk in snapshot.chunk_ids()}
    total = 0
    for pack_id in packs:
        with contextlib.suppress(OSError):
            total += repo.pack_path(pack_id).stat().st_size
    return total


def _newest_snapshot(repo: Repository, key: bytes) -> tuple[Path, v3.Snapshot] | None:
    newest: tuple[int, Path] | None = None
    for path in repo.snapshot_paths():
        try:
            header = read_header(path)
        except (BackupError, OSError):
            continue
        if newest is None or header.created_ns > newest[0]:
            newest = (header.created_ns, path)
    if newest is None:
        return None
    try:
        return newest[1], read_snapshot(newest[1], key)[1]
    except BackupError:
        return None  # a damaged parent only costs re-reading the attachments


def read_header(path: Path) -> v3.Header:
    with path.open("rb") as handle:
        return v3.Header.parse(handle.read(v3.MAX_HEADER_LENGTH))[0]


def verify_written(
    repo: Repository,
    key: bytes,
    snapshot_path: Path,
    packs: list[v3.PackEntry],
    index_path: Path | None,
    *,
    known: set[bytes],
    packs_read_back: bool = False,
) -> None:
    """Reads back, from the disk, the packs, index and snapshot just written and
    authenticates every byte. `known` are the chunks the run found already in the
    folder (from indexes it read at its start, whose packs exist);
    `packs_read_back`: the packs were read back as they were written."""
    for pack in [] if packs_read_back else packs:
        # Each blob's tag (its id is the AD) covers what the disk could change; the
        # ids were computed from the plaintext moments ago.
        wanted = {blob.chunk_id for blob in pack.blobs}
        _check_pack(repo, key, pack.pack_id, wanted, pack, check_ids=False)
    available = set(known)
    if index_path is not None:
        _drop_cache(index_path)
        body = v3.open_body(key, index_path.read_bytes(), v3.KIND_INDEX)[1]
        if v3.decode_index(body) != packs:
            raise CorruptBackup(0, "the new index does not read back as written")
        available.update(blob.chunk_id for pack in packs for blob in pack.blobs)
    _drop_cache(snapshot_path)
    _header, snapshot = read_snapshot(snapshot_path, key)
    missing = snapshot.chunk_ids() - available
    if missing:
        raise CorruptBackup(0, f"the new snapshot names {len(missing):,} chunks the folder lacks")


def _drop_cache(path: Path) -> None:
    """So a read-back reads the disk, not the page cache the write just filled."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _check_pack(
    repo: Repository,
    key: bytes,
    pack_id: bytes,
    wanted: set[bytes],
    entry: v3.PackEntry,
    *,
    check_ids: bool = True,
) -> int:
    """A whole pack: its name is its SHA-256, its header takes the key, each blob the
    index names is where it says, opens, and its content hashes to its id."""
    path = repo.pack_path(pack_id)
    _drop_cache(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptBackup(0, f"pack {pack_id.hex()[:12]}… is missing") from None
    name = f"pack {pack_id.hex()[:12]}…"
    if hashlib.sha256(data).digest() != pack_id:
        raise CorruptBackup(0, f"{name} does not match its name (damaged or cut short)")
    header, length = v3.Header.parse(data, v3.KIND_PACK)
    header.check_key(key)
    aead = ReusableAead(header.file_key(key))
    id_key = v3.chunk_id_key(key)
    end = length
    with memoryview(data) as view:
        for number, blob in enumerate(entry.blobs):
            if blob.offset != end or blob.offset + blob.length > len(data):
                raise CorruptBackup(blob.offset, f"{name} does not hold what its index says")
            end = blob.offset + blob.length
            if blob.chunk_id not in wanted:
                continue
            sealed = view[blob.offset : end]
            try:
                plain = aead.open(v3.blob_nonce(number), sealed, blob.chunk_id)
            except DecryptionError:
                raise CorruptBackup(
                    blob.offset, f"a chunk in {name} fails authentication"
                ) from None
            if check_ids and v3.chunk_id(id_key, plain) != blob.chunk_id:
                raise CorruptBackup(blob.offset, f"a chunk in {name} does not match its id")
    if end != len(data):
        raise CorruptBackup(end, f"{name} has bytes its index does not name")
    return len(data)


# ---- verify ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SnapshotReport:
    pages: int
    database_bytes: int
    files: int
    file_bytes: int
    packs: int
    pack_bytes: int


def verify_snapshot(
    path: Path, key: bytes, progress: Progress = engine._no_progress
) -> SnapshotReport:
    """A snapshot and every pack it uses, byte for byte; writes nothing."""
    repo = Repository.of_snapshot(path)
    header, snapshot = read_snapshot(path, key)
    index = load_index(repo, key)
    by_pack: dict[bytes, set[bytes]] = {}
    for chunk in snapshot.chunk_ids():
        where = index.chunks.get(chunk)
        if where is None:
            raise CorruptBackup(0, "the snapshot names a chunk no index holds")
        by_pack.setdefault(where.pack_id, set()).add(chunk)
    entries = {p.pack_id: p for packs in index.files.values() for p in packs}
    done = 0
    for pack_id, wanted in sorted(by_pack.items()):
        done += _check_pack(repo, key, pack_id, wanted, entries[pack_id])
        progress(done, header.total)
    page_plain = snapshot.page_size - snapshot.reserve
    lengths = {c: index.chunks[c].length - v3.TAG_LENGTH for c in snapshot.chunk_ids()}
    if any(lengths[page] != page_plain for page in snapshot.pages):
        raise CorruptBackup(0, "a database page in the snapshot has the wrong length")
    for entry in snapshot.files:
        if sum(lengths[c] for c in entry.chunks) != entry.size:
            raise CorruptBackup(0, f"the file {entry.path} does not match its entry")
    return SnapshotReport(
        len(snapshot.pages),
        len(snapshot.pages) * snapshot.page_size,
        len(snapshot.files),
        sum(e.size for e in snapshot.files),
        len(by_pack),
        done,
    )


# ---- restore ---------------------------------------------------------------------------


def restore_snapshot(
    path: Path,
    key: bytes,
    profile: Path,
    protector: Protector,
    *,
    progress: Progress = engine._no_progress,
    cancelled: Cancelled = engine._never,
) -> engine.RestoreReport:
    """Like `engine.restore_backup`: everything is rebuilt in a staging folder and
    moved into `profile` only when complete; a failure leaves no profile folder
    behind that was not there before."""
    if Store.exists(profile) or (profile / DB_FILE_NAME).exists():
        raise ProfileNotEmpty
    header = read_header(path)
    header.check_key(key)
    repo = Repository.of_snapshot(path)
    _header, snapshot = read_snapshot(path, key)
    index = load_index(repo, key)
    missing = snapshot.chunk_ids() - index.chunks.keys()
    if missing:
        raise CorruptBackup(0, f"the snapshot names {len(missing):,} chunks the folder lacks")
    created_profile = not profile.exists()
    profile.parent.mkdir(parents=True, exist_ok=True)
    for stale in profile.parent.glob(f".{profile.name}.restoring-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = profile.parent / f".{profile.name}.restoring-{os.getpid()}-{time.time_ns()}"
    staging.mkdir(mode=0o700)
    reader = PackReader(repo, key)
    moved = False
    try:
        total = header.total or 1
        done = 0

        def tick(length: int) -> None:
            nonlocal done
            done += length
            progress(done, max(total, done))
            if cancelled():
                raise BackupCancelled

        image = _restore_pages(snapshot, index, reader, staging / "image.db", tick)
        attachments = staging / "attachments"
        attachments.mkdir(mode=0o700)
        file_bytes = _restore_files(snapshot, index, reader, attachments, tick)
        try:
            counts = image.row_counts()
            store = Store.create_from_image(staging, protector, image)
            try:
                archived = engine._retire_restored_keys(store)
            finally:
                store.close()
        except StoreError as error:
            raise CorruptBackup(0, str(error)) from None
        finally:
            image.discard()
        profile.mkdir(parents=True, exist_ok=True, mode=0o700)
        if Store.exists(profile):
            raise ProfileNotEmpty
        engine._move_into_place(staging, profile)
        moved = True
    finally:
        reader.close()
        shutil.rmtree(staging, ignore_errors=True)
        if not moved and created_profile:
            with contextlib.suppress(OSError):
                profile.rmdir()
    return engine.RestoreReport(counts, len(snapshot.files), file_bytes, archived)


def _restore_pages(
    snapshot: v3.Snapshot,
    index: LoadedIndex,
    reader: PackReader,
    target: Path,
    tick: Callable[[int], None],
) -> DatabaseImageFile:
    """The pages, re-encrypted into an SQLCipher image under a fresh random key,
    read in pack order (sequential reads) and written at their places."""
    size = snapshot.page_size
    usable = size - snapshot.reserve
    image_key = random_bytes(32)
    codec = SqlcipherPages(image_key, random_bytes(SQLCIPHER_SALT_LENGTH), size)
    order = sorted(
        range(len(snapshot.pages)),
        key=lambda n: (
            index.chunks[snapshot.pages[n]].pack_id,
            index.chunks[snapshot.pages[n]].offset,
        ),
    )
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        padding = bytes(snapshot.reserve)
        for done, position in enumerate(order, 1):
            chunk = snapshot.pages[position]
            plain = reader.blob(chunk, index.chunks[chunk])
            if len(plain) != usable:
                raise CorruptBackup(0, "a database page in the snapshot has the wrong length")
            if position == 0 and (
                plain[:16] != b"SQLite format 3\x00" or plain[20] != snapshot.reserve
            ):
                raise CorruptBackup(0, "the snapshot's first page is not a database header")
            os.pwrite(fd, codec.encrypt(position + 1, plain + padding), position * size)
            if done % 4096 == 0:
                tick(4096 * size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return DatabaseImageFile(target, image_key, size, snapshot.schema, len(snapshot.pages) * size)


def _restore_files(
    snapshot: v3.Snapshot,
    index: LoadedIndex,
    reader: PackReader,
    folder: Path,
    tick: Callable[[int], None],
) -> int:
    written = 0
    folders = {folder}
    # Every file chunk in restore order; the disk reads PREFETCH_CHUNKS ahead.
    ahead = iter([index.chunks[chunk] for entry in snapshot.files for chunk in entry.chunks])
    for where in itertools.islice(ahead, PREFETCH_CHUNKS):
        reader.prefetch(where)
    for entry in snapshot.files:
        target = folder.joinpath(*entry.path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        folders.add(target.parent)
        size = 0
        with target.open("xb") as handle:
            for chunk in entry.chunks:
                for where in itertools.islice(ahead, 1):
                    reader.prefetch(where)
                plain = reader.blob(chunk, index.chunks[chunk])
                size += len(plain)
                if size > entry.size:
                    break
                handle.write(plain)
            handle.flush()
            os.fsync(handle.fileno())
        if size != entry.size:
            raise CorruptBackup(0, f"the file {entry.path} does not match its entry")
        written += size
        tick(size)
    for each in folders:
        fsync_directory(each)
    return written


# ---- prune ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneReport:
    snapshots: int  # snapshots deleted
    packs: int  # packs deleted (repacked ones included)
    repacked: int  # packs whose still-used chunks were moved into new packs
    freed: int  # bytes the folder's packs and indexes shrank by


def prune(
    folder: Path,
    key: bytes,
    keep: int = 2,
    checkpoint: Checkpoint = _no_checkpoint,
    *,
    retention: Retention | None = None,
    clock: Clock = time.time_ns,
    tz: tzinfo | None = None,
) -> PruneReport:
    """Keeps what `retention` (or, without it, "the newest `keep`") keeps; deletes
    the rest and what only they used, and repacks mostly unused packs."""
    repo = Repository.for_key(folder, key, checkpoint)
    if not repo.root.is_dir():
        return PruneReport(0, 0, 0, 0)
    lock = Lock(repo)
    lock.acquire()
    try:
        repo.remove_temporaries()
        return _prune_locked(
            repo, key, retention or Retention(last=keep), clock=clock, tz=tz, lock=lock
        )
    finally:
        lock.release()


def _prune_locked(
    repo: Repository,
    key: bytes,
    rule: Retention,
    *,
    clock: Clock = time.time_ns,
    tz: tzinfo | None = None,
    lock: Lock | None = None,
    index: LoadedIndex | None = None,
    decoded: dict[Path, v3.Snapshot] | None = None,
) -> PruneReport:
    """`index`: the folder's indexes as `load_index` reads them, if the caller
    has them (read anew otherwise); `decoded`: snapshots the caller has read.

    Snapshots first (each deletion leaves the others whole), then new packs for
    the still-used chunks of mostly unused packs, then one new index of the packs
    still used, then the old indexes, then the unused packs: killed anywhere, every
    kept snapshot still finds each of its chunks in a pack that exists (no pack is
    deleted while an index still names it, and none is deleted before the index
    naming the copies of its chunks is on disk)."""
    dated = []
    for path in repo.snapshot_paths():
        try:
            dated.append((read_header(path).created_ns, path))
        except (BackupError, OSError):
            continue
    dated.sort(reverse=True)
    keep_times = kept_times((created for created, _path in dated), rule, tz)
    kept_snapshots = [(c, p) for c, p in dated if c in keep_times]
    removed = 0
    for created, path in dated:
        if created not in keep_times:
            repo.remove(path)
            removed += 1
    used: set[bytes] = set()
    for _created, path in kept_snapshots:
        known_snapshot = (decoded or {}).get(path)
        used |= (known_snapshot or read_snapshot(path, key)[1]).chunk_ids()
    existing = repo.pack_ids()
    before = _folder_bytes(repo)
    if index is None:
        index = load_index(repo, key, existing=existing)
    # Each used chunk counts in one pack only (the one the index lookup finds), so
    # copies a killed repack left behind are dropped rather than kept twice.
    owner = {chunk: where.pack_id for chunk, where in index.chunks.items() if chunk in used}
    kept: dict[bytes, v3.PackEntry] = {}
    repack: list[v3.PackEntry] = []
    for packs in index.files.values():
        for pack in packs:
            if pack.pack_id not in existing or pack.pack_id in kept:
                continue
            mine = [b for b in pack.blobs if owner.get(b.chunk_id) == pack.pack_id]
            if not mine:
                continue
            kept[pack.pack_id] = pack
            total = sum(b.length for b in pack.blobs)
            if sum(b.length for b in mine) < total * (1 - REPACK_UNUSED_SHARE):
                repack.append(pack)
    listed = {p.pack_id for packs in index.files.values() for p in packs}
    unused = existing - kept.keys()
    if (
        not repack
        and not unused
        and listed <= kept.keys()
        and len(index.files) <= INDEX_FILES_BEFORE_MERGE
    ):
        return PruneReport(removed, 0, 0, 0)
    header = read_header(kept_snapshots[0][1]) if kept_snapshots else None
    if repack and header is not None:
        writer = _PackWriter(repo, key, header.method, header.record_id, clock)
        reader = PackReader(repo, key)
        try:
            for pack in repack:
                for number, blob in enumerate(pack.blobs):
                    if owner.get(blob.chunk_id) == pack.pack_id:
                        where = Location(pack.pack_id, number, blob.offset, blob.length)
                        writer.add(blob.chunk_id, reader.blob(blob.chunk_id, where))
                del kept[pack.pack_id]
                unused.add(pack.pack_id)
                if lock is not None:
                    lock.refresh()
            writer.flush()
        finally:
            reader.close()
        for entry in writer.written:
            # Read back before the old copies go: the new pack is their only one then.
            _check_pack(repo, key, entry.pack_id, {b.chunk_id for b in entry.blobs}, entry)
            kept[entry.pack_id] = entry
    old = list(index.files)
    if kept and header is not None:
        head = v3.new_header(
            key,
            v3.KIND_INDEX,
            header.method,
            record_id=header.record_id,
            created_ns=clock(),
        )
        body = v3.encode_index(sorted(kept.values(), key=lambda p: p.pack_id))
        new = repo.write_file(repo.root / "index", v3.seal_body(key, head, body))
        old = [p for p in old if p != new]
    for path in old:
        repo.remove(path)
    for pack_id in sorted(unused):
        repo.remove(repo.pack_path(pack_id))
    return PruneReport(removed, len(unused), len(repack), max(0, before - _folder_bytes(repo)))


def _folder_bytes(repo: Repository) -> int:
    total = 0
    for path in repo.index_paths():
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    for pack_id in repo.pack_ids():
        with contextlib.suppress(OSError):
            total += repo.pack_path(pack_id).stat().st_size
    return total


# ---- listing --------------------------------------------------------------------------


def list_snapshots(folder: Path) -> list[engine.BackupInfo]:
    """Version 3 snapshots in `folder` (any key), newest first, from clear headers."""
    found = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError):
        for repo in folder.iterdir():
            if not repo.name.startswith("cipherline-") or not repo.is_dir():
                continue
            for path in Repository(repo).snapshot_paths():
                try:
                    header = read_header(path)
                except (BackupError, OSError):
                    continue
                found.append(_backup_info(path, header))
    return found


def is_snapshot(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            head = handle.read(6)
    except OSError:
        return False
    return head[:4] == v3.MAGIC and len(head) == 6 and head[4] == v3.VERSION


def describe_snapshot(path: Path) -> engine.BackupInfo:
    return _backup_info(path, read_header(path))


def _backup_info(path: Path, header: v3.Header) -> engine.BackupInfo:
    return engine.BackupInfo(
        path,
        header.total,
        header.created_ns // 1_000_000_000,
        header.method_name,
        bool(header.flags & v3.FLAG_ATTACHMENTS),
        header.record_id,
        version=v3.VERSION,
        added=header.added,
        created_ns=header.created_ns,
    )
