"""Writing, listing, verifying and restoring backup files on disk.

The format itself is `app.backup.format` (sans-I/O); this module feeds it from
the store and the attachments folder and writes to the cloud folder the way a
sync client needs: to a temporary name, fsync'd, then renamed, so no half backup
is ever uploaded, and the previous backups stay until the new one is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import queue
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from app.backup import format as fmt
from app.backup import server_record
from app.backup.errors import (
    BackupCancelled,
    BackupError,
    CorruptBackup,
    NotABackup,
    NotEnoughSpace,
    ProfileNotEmpty,
)
from app.config import ServerConfig
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import ProtocolError
from app.protocol.session import Session
from app.store import Protector, Store, StoreError
from app.store.database import (
    DB_FILE_NAME,
    RESTORED_ADD,
    RESTORED_DEVICE_SETTING,
    DatabaseImageFile,
)
from app.store.durability import (
    ReadDropper,
    WritebackPacer,
    fsync_directory,
    read_sequentially,
)
from app.store.keyfile import KEY_FILE_NAME

SUFFIX = ".clbk"
PARTIAL_SUFFIX = ".partial"
NAME_PATTERN = re.compile(r"^cipherline-(\d{8}-\d{6})(?:-\d+)?\.clbk$")
FILE_PIECE = 1 << 20
READ_SIZE = 1 << 20
SPACE_MARGIN = 16 << 20

# (bytes done, bytes expected) -> None
Progress = Callable[[int, int], None]
Cancelled = Callable[[], bool]

CLOUD_FOLDER_CANDIDATES = (
    ("Dropbox", "Dropbox"),
    ("Google Drive", "Google Drive"),
    ("Google Drive", "GoogleDrive"),
    ("Google Drive", "My Drive"),
    ("OneDrive", "OneDrive"),
    ("Nextcloud", "Nextcloud"),
    ("iCloud Drive", "iCloudDrive"),
    ("iCloud Drive", "Library/Mobile Documents/com~apple~CloudDocs"),
)


def find_cloud_folders(home: Path | None = None) -> list[tuple[str, Path]]:
    """Sync folders that exist under the home directory, as (service, path)."""
    home = home or Path.home()
    found = []
    for service, relative in CLOUD_FOLDER_CANDIDATES:
        path = home / relative
        if path.is_dir():
            found.append((service, path))
    return found


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    size: int
    created: int
    method: str
    has_attachments: bool
    record_id: bytes
    version: int = fmt.VERSION
    added: int = 0  # version 3: bytes this backup added to the folder
    created_ns: int = 0  # version 3: orders snapshots made within one second


def _no_progress(_done: int, _total: int) -> None:
    return None


def _never() -> bool:
    return False


def read_header(path: Path) -> tuple[fmt.BackupHeader, int]:
    with path.open("rb") as handle:
        head = handle.read(fmt.MAX_HEADER_LENGTH)
    return fmt.BackupHeader.parse(head)


def check_backup_key(path: Path, key: bytes) -> None:
    """Raises WrongKey at once when `key` does not open the backup at `path`."""
    from app.backup import snapshots

    if snapshots.is_snapshot(path):
        snapshots.read_header(path).check_key(key)
    else:
        fmt.check_key(read_header(path)[0], key)


def describe(path: Path) -> BackupInfo:
    from app.backup import snapshots

    if snapshots.is_snapshot(path):
        return snapshots.describe_snapshot(path)
    header, _length = read_header(path)
    return BackupInfo(
        path,
        path.stat().st_size,
        header.created,
        header.method_name,
        header.has_attachments,
        header.record_id,
        header.version,
    )


def list_backups(folder: Path) -> list[BackupInfo]:
    """Our backups in `folder` (version 3 snapshots and older single files), newest
    first; unreadable files are skipped."""
    from app.backup import snapshots

    found = snapshots.list_snapshots(folder)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError):
        for path in folder.iterdir():
            if not NAME_PATTERN.match(path.name):
                continue
            try:
                found.append(describe(path))
            except (BackupError, OSError):
                continue
    # Several backups can share a second; the file's write time breaks the tie.
    return sorted(
        found,
        key=lambda info: (info.created, info.created_ns or info.path.stat().st_mtime_ns),
        reverse=True,
    )


# ---- writing -----------------------------------------------------------------------


def _attachment_files(attachments_dir: Path | None) -> list[Path]:
    if attachments_dir is None or not attachments_dir.is_dir():
        return []
    return sorted(p for p in attachments_dir.rglob("*") if p.is_file())


def _file_frames(attachments_dir: Path | None, files: list[Path]) -> Iterator[bytes]:
    assert attachments_dir is not None or not files
    for path in files:
        relative = path.relative_to(attachments_dir).as_posix()  # type: ignore[arg-type]
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            yield fmt.frame(fmt.FRAME_FILE_START, Writer().text16(relative).u64(size).getvalue())
            left = size
            # Exactly the size announced, even if the file grows meanwhile.
            while left and (piece := handle.read(min(FILE_PIECE, left))):
                left -= len(piece)
                yield fmt.frame_header(fmt.FRAME_FILE_DATA, len(piece))
                yield piece
        if left:
            raise BackupError(f"the attachment {relative} shrank while it was being backed up")
        yield fmt.frame(fmt.FRAME_FILE_END, b"")


def _image_frames(image: DatabaseImageFile) -> Iterator[bytes]:
    yield fmt.DatabaseImage(image.schema, image.page_size, image.size, image.key).to_frame()
    size = 0
    with image.path.open("rb") as handle:
        while piece := handle.read(FILE_PIECE):
            size += len(piece)
            yield fmt.frame_header(fmt.FRAME_DATABASE_DATA, len(piece))
            yield piece
    if size != image.size:
        raise BackupError("the database copy changed while it was being backed up")
    yield fmt.frame(fmt.FRAME_DATABASE_END, b"")


def _frames(
    image: DatabaseImageFile, attachments_dir: Path | None, files: list[Path]
) -> Iterator[bytes]:
    # The database first: a restore rebuilds the store from it on another thread
    # while the attachment files are still arriving.
    yield from _image_frames(image)
    image.discard()
    yield from _file_frames(attachments_dir, files)


def _partial_name(target: Path) -> Path:
    return target.with_name("." + target.name + PARTIAL_SUFFIX)


def _target_name(folder: Path, created: int) -> Path:
    """A name free both as a backup and as a partial: a backup killed in the same
    second leaves its partial behind until the next prune."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(created))
    path = folder / f"cipherline-{stamp}{SUFFIX}"
    counter = 1
    while path.exists() or _partial_name(path).exists():
        path = folder / f"cipherline-{stamp}-{counter}{SUFFIX}"
        counter += 1
    return path


def estimate_size(store: Store, files: list[Path]) -> int:
    database = store.path.stat().st_size if store.path.exists() else 0
    return database + sum(p.stat().st_size for p in files)


def write_backup(
    store: Store,
    folder: Path,
    key: bytes,
    *,
    method: int,
    record_id: bytes = b"",
    attachments_dir: Path | None = None,
    keep: int = 2,
    chunk_size: int = fmt.DEFAULT_CHUNK_SIZE,
    progress: Progress = _no_progress,
    cancelled: Cancelled = _never,
) -> BackupInfo:
    """Writes a new backup into `folder`, then prunes to the newest `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    files = _attachment_files(attachments_dir)
    expected = estimate_size(store, files)
    free = shutil.disk_usage(folder).free
    if free < expected + SPACE_MARGIN:
        raise NotEnoughSpace(
            f"the folder has {free / 2**20:,.0f} MB free and this backup needs about "
            f"{(expected + SPACE_MARGIN) / 2**20:,.0f} MB; the previous backup is untouched"
        )
    database = estimate_size(store, [])
    free_beside_store = shutil.disk_usage(store.path.parent).free
    if free_beside_store < database + SPACE_MARGIN:
        raise NotEnoughSpace(
            f"the profile's disk has {free_beside_store / 2**20:,.0f} MB free and the backup"
            f" needs about {(database + SPACE_MARGIN) / 2**20:,.0f} MB there for a moment"
        )
    header = fmt.new_header(
        key, method, record_id=record_id, attachments=bool(files), chunk_size=chunk_size
    )
    encoder = fmt.BackupEncoder(key, header)
    target = _target_name(folder, header.created)
    partial = _partial_name(target)
    written = 0
    image = store.export_image()
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        pacer = WritebackPacer()
        # Buffered: a raw write may write less than it was given.
        with os.fdopen(fd, "wb") as handle, contextlib.closing(pacer):
            pacer.start_file(fd)
            written += handle.write(encoder.start())
            for piece in _frames(image, attachments_dir, files):
                for chunk in encoder.write(piece):
                    handle.write(chunk)
                    written += len(chunk)
                    pacer.written(written)
                    progress(written, max(expected, written))
                    if cancelled():
                        raise BackupCancelled
            written += handle.write(encoder.finish())
            handle.flush()
            pacer.end_file()
            os.fsync(handle.fileno())
        os.replace(partial, target)
        fsync_directory(folder)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        image.discard()
    progress(written, written)
    prune(folder, keep, newest=target)
    return describe(target)


def prune(folder: Path, keep: int, *, newest: Path) -> list[Path]:
    """Deletes our oldest backups beyond `keep` (never `newest`) and stale partials."""
    removed = []
    # Version 3 snapshots are pruned by `snapshots.prune`, never by deleting files here.
    single_files = [info for info in list_backups(folder) if info.version < 3]
    for info in single_files[max(keep, 1) :]:
        if info.path != newest:
            info.path.unlink(missing_ok=True)
            removed.append(info.path)
    for stale in folder.glob(f".cipherline-*{SUFFIX}{PARTIAL_SUFFIX}"):
        # A partial left by a crash is garbage once a newer backup completed.
        if stale.stat().st_mtime < newest.stat().st_mtime - 60:
            stale.unlink(missing_ok=True)
    return removed


def remove_single_files(folder: Path) -> list[Path]:
    """Version 1 and 2 backups, once the folder holds enough version 3 snapshots
    to replace them (the caller checks that)."""
    removed = []
    for info in list_backups(folder):
        if info.version < 3:
            info.path.unlink(missing_ok=True)
            removed.append(info.path)
    return removed


# ---- reading -----------------------------------------------------------------------


class _InOrder:
    """Runs jobs on one helper thread, in the order given, at most `depth` ahead.

    A restore hands its file writes here so that decrypting the next chunk and
    writing the previous one overlap (both spend their time outside the
    interpreter). The first failure is kept and raised to the caller at its next
    call; later jobs are skipped.
    """

    def __init__(self, depth: int = 32) -> None:
        self._jobs: queue.Queue[Callable[[], object] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="restore-writer", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], object]) -> None:
        if self._error is not None:
            raise self._error
        self._jobs.put(job)

    def finish(self) -> None:
        """Waits for every job; raises the first failure."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if self._error is None:
                try:
                    job()
                except BaseException as error:  # noqa: BLE001 - raised in the caller
                    self._error = error


class _FileSink:
    """Reassembles attachment files from frames into a directory."""

    def __init__(self, directory: Path | None, version: int) -> None:
        self.directory = directory
        # Version 1 ends each file with its SHA-256; version 2 leaves that to the
        # stream, which already authenticates every byte (and hashing cost ~15%).
        self._digest: Any = hashlib.sha256() if version == 1 else None
        self._handle: BinaryIO | None = None
        # One pacer for the whole stream of files: most attachments are smaller
        # than its stretch, and it is across files that writeback has to keep up.
        self._pacer = WritebackPacer()
        self._expected = 0
        self._size = 0
        self._path: Path | None = None
        self._written: list[Path] = []
        # Every name so far and the folders they imply: a second file of the same
        # name, or a file where another one's folder is, cannot both be restored.
        self._names: set[Path] = set()
        self._folders: set[Path] = set()
        self._writer = _InOrder() if directory is not None else None
        self.files = 0
        self.bytes = 0

    def start(self, frame: fmt.Frame) -> None:
        if self._path is not None:
            raise CorruptBackup(frame.offset, "a file starts inside another")
        try:
            reader = Reader(frame.payload, "file entry")
            relative, self._expected = reader.text16(), reader.u64()
            reader.end()
        except ProtocolError:
            raise CorruptBackup(frame.offset, "a file entry is malformed") from None
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts:
            raise CorruptBackup(frame.offset, "a file name points outside the profile")
        path = Path(relative)
        if path in self._names or path in self._folders:
            raise CorruptBackup(frame.offset, f"the backup holds the file {relative} twice")
        if any(folder in self._names for folder in path.parents):
            raise CorruptBackup(
                frame.offset, f"the file {relative} is inside another file of the backup"
            )
        self._names.add(path)
        self._folders.update(path.parents)
        if self._digest is not None:
            self._digest = hashlib.sha256()
        self._size = 0
        self._path = Path(relative)
        if self.directory is not None:
            target = self.directory / self._path
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._handle = target.open("xb")
            if self._writer is not None:
                fd = self._handle.fileno()
                self._writer.submit(functools.partial(self._pacer.start_file, fd))

    def data(self, frame: fmt.Frame) -> None:
        if self._path is None:
            raise CorruptBackup(frame.offset, "file data outside a file")
        if self._digest is not None:
            self._digest.update(frame.payload)
        self._size += len(frame.payload)
        if self._size > self._expected:
            raise CorruptBackup(frame.offset, f"the file {self._path} is longer than it says")
        if self._writer is not None and self._handle is not None:
            self._writer.submit(
                functools.partial(
                    _write_piece, self._handle, self._pacer, frame.payload, self._size
                )
            )

    def end(self, frame: fmt.Frame) -> None:
        if self._path is None:
            raise CorruptBackup(frame.offset, "a file ends that never started")
        expected_end = self._digest.digest() if self._digest is not None else b""
        if self._size != self._expected or frame.payload != expected_end:
            raise CorruptBackup(frame.offset, f"the file {self._path} does not match its entry")
        if self._writer is not None and self._handle is not None:
            self._writer.submit(functools.partial(_end_file, self._handle, self._pacer))
            self._handle = None
            assert self.directory is not None
            self._written.append(self.directory / self._path)
        self.files += 1
        self.bytes += self._size
        self._path = None

    def finish(self, offset: int) -> None:
        """At the end of the stream: a file without its end frame is incomplete
        (its size and, in version 1, its digest were never checked)."""
        if self._path is not None:
            raise CorruptBackup(offset, f"the file {self._path} has no end")

    def close(self) -> None:
        """Stops the writer (its errors are the caller's concern by now)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.finish()
        self._pacer.close()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def sync(self) -> None:
        """fsync every file written. Deferred to the end so the kernel writes them
        back while the restore goes on, instead of the restore waiting file by file;
        nothing is moved into the profile before this returns."""
        if self._writer is not None:
            self._writer.finish()
        self._pacer.close()
        for path in self._written:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if self.directory is not None:
            for folder in {p.parent for p in self._written} | {self.directory}:
                fsync_directory(folder)


def _write_piece(handle: BinaryIO, pacer: WritebackPacer, piece: bytes, total: int) -> None:
    handle.write(piece)
    pacer.written(total)


def _end_file(handle: BinaryIO, pacer: WritebackPacer) -> None:
    handle.flush()
    pacer.end_file()
    handle.close()


class _ImageSink:
    """Reassembles a version 2 database image from frames into one file."""

    def __init__(self, target: Path | None) -> None:
        self.target = target
        self._handle: BinaryIO | None = None
        self._entry: fmt.DatabaseImage | None = None
        self._size = 0
        self.complete = False

    def start(self, frame: fmt.Frame) -> None:
        if self._entry is not None:
            raise CorruptBackup(frame.offset, "the backup holds a second database")
        try:
            self._entry = fmt.DatabaseImage.parse(frame.payload)
        except ProtocolError:
            raise CorruptBackup(frame.offset, "the database entry is malformed") from None
        if self.target is not None:
            fd = os.open(self.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._handle = os.fdopen(fd, "wb")

    def data(self, frame: fmt.Frame) -> None:
        if self._entry is None or self.complete:
            raise CorruptBackup(frame.offset, "database data outside the database")
        self._size += len(frame.payload)
        if self._size > self._entry.size:
            raise CorruptBackup(frame.offset, "the database is longer than it says")
        if self._handle is not None:
            self._handle.write(frame.payload)

    def end(self, frame: fmt.Frame) -> None:
        if self._entry is None or self.complete:
            raise CorruptBackup(frame.offset, "a database ends that never started")
        if self._size != self._entry.size or frame.payload:
            raise CorruptBackup(frame.offset, "the database does not match its entry")
        self.close()
        self.complete = True

    @property
    def size(self) -> int:
        return self._size

    def image(self) -> DatabaseImageFile:
        if not self.complete or self._entry is None or self.target is None:
            raise CorruptBackup(0, "the backup holds no database")
        entry = self._entry
        return DatabaseImageFile(self.target, entry.key, entry.page_size, entry.schema, entry.size)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _frames_from(
    path: Path, key: bytes, progress: Progress, cancelled: Cancelled
) -> Iterator[fmt.Frame]:
    header, header_length = read_header(path)
    decoder = fmt.BackupDecoder(key, header, header_length)
    total = path.stat().st_size
    done = header_length
    with path.open("rb") as handle:
        read_sequentially(handle.fileno())
        dropper = ReadDropper(handle.fileno())
        handle.seek(header_length)
        while data := handle.read(READ_SIZE):
            done += len(data)
            dropper.consumed(done)
            yield from decoder.feed(data)
            progress(done, total)
            if cancelled():
                raise BackupCancelled
        yield from decoder.finish()


@dataclass(frozen=True)
class VerifyReport:
    version: int
    records: int  # version 1: one per row
    database_bytes: int  # version 2: the database image
    files: int
    file_bytes: int
    size: int

    def describe_contents(self) -> str:
        store = (
            f"{self.records:,} records"
            if self.version == 1
            else f"a {self.database_bytes:,}-byte database"
        )
        return f"{store}, {self.files:,} files"


def verify_backup(
    path: Path, key: bytes, progress: Progress = _no_progress, cancelled: Cancelled = _never
) -> VerifyReport:
    """Decrypts and checks every chunk, frame and digest; writes nothing."""
    from app.backup import snapshots

    if snapshots.is_snapshot(path):
        report = snapshots.verify_snapshot(path, key, progress)
        return VerifyReport(
            3, 0, report.database_bytes, report.files, report.file_bytes, report.pack_bytes
        )
    header, _length = read_header(path)
    records = 0
    files = _FileSink(None, header.version)
    image = _ImageSink(None)
    try:
        for frame in _frames_from(path, key, progress, cancelled):
            records += _dispatch(frame, header.version, files, image)
        files.finish(path.stat().st_size)
    finally:
        files.close()
    if header.version >= 2 and not image.complete:
        raise CorruptBackup(path.stat().st_size, "the backup holds no database")
    return VerifyReport(
        header.version, records, image.size, files.files, files.bytes, path.stat().st_size
    )


def _dispatch(frame: fmt.Frame, version: int, files: _FileSink, image: _ImageSink) -> int:
    """Routes one frame; returns 1 for a (version 1) record, which the caller handles."""
    kind = frame.kind
    if kind == fmt.FRAME_RECORD and version == 1:
        try:
            fmt.parse_record(frame.payload)
        except ProtocolError:
            raise CorruptBackup(frame.offset, "a record is malformed") from None
        return 1
    if kind == fmt.FRAME_FILE_START:
        files.start(frame)
    elif kind == fmt.FRAME_FILE_DATA:
        files.data(frame)
    elif kind == fmt.FRAME_FILE_END:
        files.end(frame)
    elif kind == fmt.FRAME_DATABASE_DATA and version >= 2:
        image.data(frame)
    elif kind == fmt.FRAME_DATABASE_START and version >= 2:
        image.start(frame)
    elif kind == fmt.FRAME_DATABASE_END and version >= 2:
        image.end(frame)
    else:
        raise CorruptBackup(
            frame.offset, f"unexpected frame type {kind} in a version {version} backup"
        )
    return 0


@dataclass(frozen=True)
class RestoreReport:
    counts: dict[str, int]  # rows per table, as the backup holds them
    files: int
    file_bytes: int
    sessions_archived: int = 0  # pairwise sessions retired to decrypt-only
    # The relay the restored profile talks to, as written into its server.json
    # (app/backup/server_record.py); None when neither chosen nor recorded.
    server_config: ServerConfig | None = None


def _retire_restored_keys(store: Store) -> int:
    """A restore resumes no key (docs/protocol.md, "Restore"); returns how many
    sessions it archived.

    The device the backup came from may have sent past the backup under the same
    ratchet chains and sender-key chains, so sending on from the backup's state
    would use a message key (and so an AES-GCM key and nonce) a second time. Every
    pairwise session therefore becomes decrypt-only (`Session.archived`) and moves
    to the archive, where it can still open late messages of the old session; each
    of those contacts is owed a restore notice, sent first on the fresh session the
    next message starts. Own sender-key chains are dropped: the next group message
    makes and distributes a fresh one. One transaction, before the restored store
    ever reaches the profile.
    """
    now = int(time.time() * 1000)
    archived = 0
    with store.transaction():
        for username, device_id, state in store.sessions.all():
            try:
                retired = Session.from_bytes(state).archived()
            except ProtocolError:
                raise CorruptBackup(0, "a session in the backup is malformed") from None
            store.sessions.archive(username, device_id, retired.to_bytes(), now=now)
            store.sessions.owe_restore_notice(username, now=now)
            archived += 1
        # Sessions a crossing start replaced are archived whole, able to send again
        # if the peer goes on using them; from a backup they must not either.
        for archive_id, state in store.sessions.archived_rows():
            try:
                retired = Session.from_bytes(state).archived()
            except ProtocolError:
                raise CorruptBackup(0, "a session in the backup is malformed") from None
            store.sessions.update_archived(archive_id, retired.to_bytes())
        store.groups.drop_own_sender_keys()
        # Envelopes still waiting to be sent were sealed under the chains retired
        # above (a snapshot of the store's own file carries them); never sent.
        store.execute("DELETE FROM outbox")
        store.execute("DELETE FROM outbox_backoff")
        # Sealed channels (docs/protocol.md §11) run on chains the original goes on
        # using: never resumed either; the next sealed message opens fresh ones.
        for table in (
            "sealed_send_channels",
            "sealed_send_pending",
            "sealed_receive_channels",
            "sealed_channel_tags",
        ):
            store.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
        # Not a clone of the original device (issue #19): at its first start the
        # copy becomes a device of its own, or takes the original's place
        # (app/services/account.py, `settle_restored_device`); adding is the
        # default until the user chooses.
        store.settings.set(RESTORED_DEVICE_SETTING, RESTORED_ADD)
    return archived


def restore_backup(
    path: Path,
    key: bytes,
    profile: Path,
    protector: Protector,
    *,
    server_config: ServerConfig | None = None,
    progress: Progress = _no_progress,
    cancelled: Cancelled = _never,
) -> RestoreReport:
    """Restores into `profile`, which must hold no store yet.

    Everything is rebuilt in a staging directory beside the profile, in one store
    transaction, and moved into place only after the final chunk authenticated; a
    failure at any point leaves the profile exactly as it was. Before that, its
    sessions are archived and its own group chains dropped
    (`_retire_restored_keys`), so the restored profile never encrypts under a key
    the backed-up device may already have used.

    Once the store is in place, so is a `server.json` the profile can connect
    with: `server_config` when given, else the profile's own, else the one the
    backup recorded (`server_record.install_after_restore`).
    """
    from app.backup import snapshots

    if snapshots.is_snapshot(path):
        report = snapshots.restore_snapshot(
            path, key, profile, protector, progress=progress, cancelled=cancelled
        )
        return _with_server_config(report, profile, protector, server_config)
    if Store.exists(profile) or (profile / DB_FILE_NAME).exists():
        raise ProfileNotEmpty
    header, _length = read_header(path)
    fmt.check_key(header, key)
    # The profile folder itself is made only when the restore succeeds: a failed
    # one leaves no empty profile behind (the v3 restore does the same).
    profile.parent.mkdir(parents=True, exist_ok=True)
    for stale in profile.parent.glob(f".{profile.name}.restoring-*"):
        # Left by a restore that was killed; it never became the profile.
        shutil.rmtree(stale, ignore_errors=True)
    staging = profile.parent / f".{profile.name}.restoring-{os.getpid()}-{time.time_ns()}"
    staging.mkdir(mode=0o700)
    try:
        (staging / "attachments").mkdir(mode=0o700)
        files = _FileSink(staging / "attachments", header.version)
        try:
            frames = _frames_from(path, key, progress, cancelled)
            restore = _restore_records if header.version == 1 else _restore_image
            counts, archived = restore(frames, staging, protector, files, path.stat().st_size)
        finally:
            files.close()
        files.sync()
        if Store.exists(profile):
            raise ProfileNotEmpty
        profile.mkdir(exist_ok=True, mode=0o700)
        _move_into_place(staging, profile)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = RestoreReport(counts, files.files, files.bytes, archived)
    return _with_server_config(report, profile, protector, server_config)


def _with_server_config(
    report: RestoreReport, profile: Path, protector: Protector, chosen: ServerConfig | None
) -> RestoreReport:
    installed = server_record.install_after_restore(profile, protector, chosen)
    return dataclasses.replace(report, server_config=installed)


def _move_into_place(staging: Path, profile: Path) -> None:
    attachments = profile / "attachments"
    if attachments.exists() and not any(attachments.iterdir()):
        attachments.rmdir()
    os.replace(staging / "attachments", attachments)
    for name in (DB_FILE_NAME, DB_FILE_NAME + "-wal", DB_FILE_NAME + "-shm"):
        if (staging / name).exists():
            os.replace(staging / name, profile / name)
    # The key file last: until it is in place the profile does not count as a store.
    os.replace(staging / KEY_FILE_NAME, profile / KEY_FILE_NAME)
    fsync_directory(profile)


def _restore_image(
    frames: Iterator[fmt.Frame],
    staging: Path,
    protector: Protector,
    files: _FileSink,
    size: int,
) -> tuple[dict[str, int], int]:
    image = _ImageSink(staging / "image.db")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-store") as pool:
        rebuilt: Future[Store] | None = None
        try:
            for frame in frames:
                _dispatch(frame, 2, files, image)
                if image.complete and rebuilt is None:
                    # Every byte of the image has passed its chunk's authentication;
                    # SQLCipher rebuilds the store from it while the files arrive.
                    # Nothing moves into the profile unless the whole stream is good.
                    rebuilt = pool.submit(
                        Store.create_from_image, staging, protector, image.image()
                    )
            files.finish(size)
            if rebuilt is None:
                # Where verify names it too: the end of the file, where it ran out.
                raise CorruptBackup(size, "the backup holds no database")
            try:
                # Counted from the image while the copy goes on: off the critical path.
                counts = image.image().row_counts()
                store = rebuilt.result()
                try:
                    archived = _retire_restored_keys(store)
                finally:
                    store.close()
            except StoreError as error:
                raise CorruptBackup(0, str(error)) from None
        except BaseException:
            if rebuilt is not None:
                with contextlib.suppress(Exception):
                    rebuilt.result().close()
            raise
        finally:
            image.close()
            if image.complete:
                image.image().discard()
    return counts, archived


def _restore_records(
    frames: Iterator[fmt.Frame],
    staging: Path,
    protector: Protector,
    files: _FileSink,
    size: int,
) -> tuple[dict[str, int], int]:
    """Version 1: one JSON record per row, loaded in one store transaction."""
    unused = _ImageSink(None)
    store = Store.create(staging, protector)
    # The chunk of the record the store refused, so the error names where it is.
    offset = 0
    try:

        def records() -> Iterator[tuple[str, bytes]]:
            nonlocal offset
            for frame in frames:
                offset = frame.offset
                if frame.kind == fmt.FRAME_RECORD:
                    try:
                        record = fmt.parse_record(frame.payload)
                    except ProtocolError:
                        raise CorruptBackup(frame.offset, "a record is malformed") from None
                    yield record
                else:
                    _dispatch(frame, 1, files, unused)
            # Inside the import, so an incomplete file rolls the records back too.
            files.finish(size)

        try:
            counts = store.import_records(records())
            return counts, _retire_restored_keys(store)
        except StoreError as error:
            raise CorruptBackup(offset, str(error)) from None
    finally:
        store.close()


def newest_backup(folder: Path) -> BackupInfo:
    backups = list_backups(folder)
    if not backups:
        raise NotABackup(f"there is no Cipherline backup in {folder}")
    return backups[0]
