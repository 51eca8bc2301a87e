"""Writing, listing, verifying and restoring backup files on disk.

The format itself is `app.backup.format` (sans-I/O); this module feeds it from
the store and the attachments folder and writes to the cloud folder the way a
sync client needs: to a temporary name, fsync'd, then renamed, so no half backup
is ever uploaded, and the previous backups stay until the new one is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from app.backup import format as fmt
from app.backup.errors import (
    BackupCancelled,
    BackupError,
    CorruptBackup,
    NotABackup,
    NotEnoughSpace,
    ProfileNotEmpty,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import ProtocolError
from app.store import Protector, Store, StoreError
from app.store.database import DB_FILE_NAME
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


def _no_progress(_done: int, _total: int) -> None:
    return None


def _never() -> bool:
    return False


def read_header(path: Path) -> tuple[fmt.BackupHeader, int]:
    with path.open("rb") as handle:
        head = handle.read(fmt.MAX_HEADER_LENGTH)
    return fmt.BackupHeader.parse(head)


def describe(path: Path) -> BackupInfo:
    header, _length = read_header(path)
    return BackupInfo(
        path,
        path.stat().st_size,
        header.created,
        header.method_name,
        header.has_attachments,
        header.record_id,
    )


def list_backups(folder: Path) -> list[BackupInfo]:
    """Our backups in `folder`, newest first; unreadable files are skipped."""
    found = []
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
        found, key=lambda info: (info.created, info.path.stat().st_mtime_ns), reverse=True
    )


# ---- writing -----------------------------------------------------------------------


def _attachment_files(attachments_dir: Path | None) -> list[Path]:
    if attachments_dir is None or not attachments_dir.is_dir():
        return []
    return sorted(p for p in attachments_dir.rglob("*") if p.is_file())


def _frames(store: Store, attachments_dir: Path | None, files: list[Path]) -> Iterator[bytes]:
    # Records are small; hand them on in ~256 KiB runs, not one by one.
    pending: list[bytes] = []
    size = 0
    for table, payload in store.export_records():
        frame = fmt.record_frame(table, payload)
        pending.append(frame)
        size += len(frame)
        if size >= 1 << 18:
            yield b"".join(pending)
            pending.clear()
            size = 0
    if pending:
        yield b"".join(pending)
    assert attachments_dir is not None or not files
    for path in files:
        relative = path.relative_to(attachments_dir).as_posix()  # type: ignore[arg-type]
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            yield fmt.frame(fmt.FRAME_FILE_START, Writer().text16(relative).u64(size).getvalue())
            while piece := handle.read(FILE_PIECE):
                digest.update(piece)
                yield fmt.frame(fmt.FRAME_FILE_DATA, piece)
        yield fmt.frame(fmt.FRAME_FILE_END, digest.digest())


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _target_name(folder: Path, created: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(created))
    path = folder / f"cipherline-{stamp}{SUFFIX}"
    counter = 1
    while path.exists():
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
    header = fmt.new_header(
        key, method, record_id=record_id, attachments=bool(files), chunk_size=chunk_size
    )
    encoder = fmt.BackupEncoder(key, header)
    target = _target_name(folder, header.created)
    partial = target.with_name("." + target.name + PARTIAL_SUFFIX)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written = 0
    try:
        with os.fdopen(fd, "wb", buffering=0) as handle:
            written += handle.write(encoder.start())
            for piece in _frames(store, attachments_dir, files):
                for chunk in encoder.write(piece):
                    written += handle.write(chunk)
                    progress(written, max(expected, written))
                    if cancelled():
                        raise BackupCancelled
            written += handle.write(encoder.finish())
            os.fsync(handle.fileno())
        os.replace(partial, target)
        _fsync_directory(folder)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    progress(written, written)
    prune(folder, keep, newest=target)
    return describe(target)


def prune(folder: Path, keep: int, *, newest: Path) -> list[Path]:
    """Deletes our oldest backups beyond `keep` (never `newest`) and stale partials."""
    removed = []
    for info in list_backups(folder)[max(keep, 1) :]:
        if info.path != newest:
            info.path.unlink(missing_ok=True)
            removed.append(info.path)
    for stale in folder.glob(f".cipherline-*{SUFFIX}{PARTIAL_SUFFIX}"):
        # A partial left by a crash is garbage once a newer backup completed.
        if stale.stat().st_mtime < newest.stat().st_mtime - 60:
            stale.unlink(missing_ok=True)
    return removed


# ---- reading -----------------------------------------------------------------------


class _FileSink:
    """Reassembles attachment files from frames into a directory."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._handle: object = None
        self._digest = hashlib.sha256()
        self._expected = 0
        self._size = 0
        self._path: Path | None = None
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
        self._digest = hashlib.sha256()
        self._size = 0
        self._path = Path(relative)
        if self.directory is not None:
            target = self.directory / self._path
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._handle = target.open("xb")

    def data(self, frame: fmt.Frame) -> None:
        if self._path is None:
            raise CorruptBackup(frame.offset, "file data outside a file")
        self._digest.update(frame.payload)
        self._size += len(frame.payload)
        if self._handle is not None:
            self._handle.write(frame.payload)  # type: ignore[attr-defined]

    def end(self, frame: fmt.Frame) -> None:
        if self._path is None:
            raise CorruptBackup(frame.offset, "a file ends that never started")
        if self._size != self._expected or frame.payload != self._digest.digest():
            raise CorruptBackup(frame.offset, f"the file {self._path} does not match its digest")
        if self._handle is not None:
            self._handle.flush()  # type: ignore[attr-defined]
            os.fsync(self._handle.fileno())  # type: ignore[attr-defined]
            self._handle.close()  # type: ignore[attr-defined]
            self._handle = None
        self.files += 1
        self.bytes += self._size
        self._path = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()  # type: ignore[attr-defined]
            self._handle = None


def _frames_from(
    path: Path, key: bytes, progress: Progress, cancelled: Cancelled
) -> Iterator[fmt.Frame]:
    header, header_length = read_header(path)
    decoder = fmt.BackupDecoder(key, header, header_length)
    total = path.stat().st_size
    done = header_length
    with path.open("rb") as handle:
        handle.seek(header_length)
        while data := handle.read(READ_SIZE):
            done += len(data)
            yield from decoder.feed(data)
            progress(done, total)
            if cancelled():
                raise BackupCancelled
        yield from decoder.finish()


@dataclass(frozen=True)
class VerifyReport:
    records: int
    files: int
    file_bytes: int
    size: int


def verify_backup(
    path: Path, key: bytes, progress: Progress = _no_progress, cancelled: Cancelled = _never
) -> VerifyReport:
    """Decrypts and checks every chunk, frame and file digest; writes nothing."""
    records = 0
    sink = _FileSink(None)
    try:
        for frame in _frames_from(path, key, progress, cancelled):
            records += _dispatch(frame, sink, None)
    finally:
        sink.close()
    return VerifyReport(records, sink.files, sink.bytes, path.stat().st_size)


def _dispatch(frame: fmt.Frame, sink: _FileSink, records: list[tuple[str, bytes]] | None) -> int:
    if frame.kind == fmt.FRAME_RECORD:
        try:
            fmt.parse_record(frame.payload)
        except ProtocolError:
            raise CorruptBackup(frame.offset, "a record is malformed") from None
        return 1
    if frame.kind == fmt.FRAME_FILE_START:
        sink.start(frame)
    elif frame.kind == fmt.FRAME_FILE_DATA:
        sink.data(frame)
    elif frame.kind == fmt.FRAME_FILE_END:
        sink.end(frame)
    else:
        raise CorruptBackup(frame.offset, f"unknown frame type {frame.kind}")
    return 0


@dataclass(frozen=True)
class RestoreReport:
    counts: dict[str, int]
    files: int
    file_bytes: int


def restore_backup(
    path: Path,
    key: bytes,
    profile: Path,
    protector: Protector,
    *,
    progress: Progress = _no_progress,
    cancelled: Cancelled = _never,
) -> RestoreReport:
    """Restores into `profile`, which must hold no store yet.

    Everything is rebuilt in a staging directory beside the profile, in one store
    transaction, and moved into place only after the final chunk authenticated; a
    failure at any point leaves the profile exactly as it was.
    """
    if Store.exists(profile) or (profile / DB_FILE_NAME).exists():
        raise ProfileNotEmpty
    header, _length = read_header(path)
    fmt.check_key(header, key)
    profile.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in profile.parent.glob(f".{profile.name}.restoring-*"):
        # Left by a restore that was killed; it never became the profile.
        shutil.rmtree(stale, ignore_errors=True)
    staging = profile.parent / f".{profile.name}.restoring-{os.getpid()}-{time.time_ns()}"
    staging.mkdir(mode=0o700)
    sink = _FileSink(staging / "attachments")
    (staging / "attachments").mkdir(mode=0o700)
    try:
        store = Store.create(staging, protector)
        try:

            def records() -> Iterator[tuple[str, bytes]]:
                for frame in _frames_from(path, key, progress, cancelled):
                    if frame.kind == fmt.FRAME_RECORD:
                        try:
                            record = fmt.parse_record(frame.payload)
                        except ProtocolError:
                            raise CorruptBackup(frame.offset, "a record is malformed") from None
                        yield record
                    else:
                        _dispatch(frame, sink, None)

            try:
                counts = store.import_records(records())
            except StoreError as error:
                raise CorruptBackup(0, str(error)) from None
        finally:
            store.close()
            sink.close()
        if Store.exists(profile):
            raise ProfileNotEmpty
        attachments = profile / "attachments"
        if attachments.exists() and not any(attachments.iterdir()):
            attachments.rmdir()
        os.replace(staging / "attachments", attachments)
        for name in (DB_FILE_NAME, DB_FILE_NAME + "-wal", DB_FILE_NAME + "-shm"):
            if (staging / name).exists():
                os.replace(staging / name, profile / name)
        # The key file last: until it is in place the profile does not count as a store.
        os.replace(staging / KEY_FILE_NAME, profile / KEY_FILE_NAME)
        _fsync_directory(profile)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RestoreReport(counts, sink.files, sink.bytes)


def newest_backup(folder: Path) -> BackupInfo:
    backups = list_backups(folder)
    if not backups:
        raise NotABackup(f"there is no Cipherline backup in {folder}")
    return backups[0]
