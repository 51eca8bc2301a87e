"""Getting bytes onto the disk: atomic replacement, directory fsync, early writeback.

Linux holds up to a tenth of memory as dirty pages before it writes any back on
its own, so a program that writes a gigabyte and then calls fsync does all its
CPU work first and only then waits for the disk. `WritebackPacer` asks the kernel
to start writing each finished stretch at once (without waiting, and without the
device cache flush an fsync costs), so the disk works while the program goes on;
the final fsync then has little left to do.

It also drops what is safely on disk from the page cache ("drop-behind"): a
backup or a restore writes gigabytes nobody reads back soon, and keeping them
cached would evict what the user's programs are using. Recycling the same few
stretches of memory is also much cheaper than taking new pages: on a virtual
machine whose host hands out memory on first touch, writing into new pages ran
at 350-650 MB/s and into recycled ones at 2-5 GB/s.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import cast

WRITEBACK_STRETCH = 32 << 20


def fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """A crash leaves either the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(path.parent)


def _linux_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", function)


_SYNC_FILE_RANGE = _linux_sync_file_range()
_SYNC_FILE_RANGE_WAIT_BEFORE = 1
_SYNC_FILE_RANGE_WRITE = 2
_SYNC_FILE_RANGE_WAIT_AFTER = 4


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Starts writing a range of a file to disk and returns without waiting for it
    (Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`: no device cache flush, pages
    stay cached for whoever reads the file next). Elsewhere the final fsync does it
    all. Only ever a hint: a failure here surfaces at that fsync."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def read_sequentially(fd: int) -> None:
    """Tells the kernel a file will be read once from start to end, so it reads
    further ahead (a restore is often reading a backup the cache has never seen)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


class ReadDropper:
    """Drops what a single sequential reader has consumed from the page cache, a
    stretch at a time, keeping the last `window` bytes (see the module's note on
    drop-behind): a backup file read once need not push the user's files out."""

    def __init__(
        self, fd: int, *, window: int = 2 * WRITEBACK_STRETCH, stretch: int = WRITEBACK_STRETCH
    ) -> None:
        self._fd = fd
        self._window = window
        self._stretch = stretch
        self._dropped = 0
        self._enabled = hasattr(os, "posix_fadvise")

    def consumed(self, total: int) -> None:
        """`total`: how many bytes from the start of the file have been read."""
        end = total - self._window
        if self._enabled and end - self._dropped >= self._stretch:
            with contextlib.suppress(OSError):  # a hint: reading goes on either way
                os.posix_fadvise(
                    self._fd, self._dropped, end - self._dropped, os.POSIX_FADV_DONTNEED
                )
            self._dropped = end


def drop_written(fd: int, offset: int, length: int) -> None:
    """Waits until a range of a file is on disk, then drops it from the page cache.
    (An fsync would also flush the device's cache for the whole file; this only
    makes the range's pages clean, which is all dropping them needs.)"""
    if _SYNC_FILE_RANGE is not None and length > 0:
        flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
        if _SYNC_FILE_RANGE(fd, offset, length, flags) == 0:
            with contextlib.suppress(OSError):  # only ever a hint, like the writeback
                os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class WritebackPacer:
    """Paces the writeback of a stream of files written one after another.

    Every `stretch` bytes of a file, and at the end of each file, its writeback
    starts; with `drop_behind`, once more than `window` bytes (or `MAX_RANGES`
    ranges) are on their way, the oldest are waited for and dropped from the page
    cache. Waiting there is what keeps a writer from running ahead of the disk by
    more than the window. Nothing here replaces the final fsync: a range that
    failed to write surfaces there.
    """

    MAX_RANGES = 64

    def __init__(
        self,
        *,
        stretch: int = WRITEBACK_STRETCH,
        window: int = 2 * WRITEBACK_STRETCH,
        drop_behind: bool = True,
    ) -> None:
        self._stretch = stretch
        self._window = window
        self._drop_behind = drop_behind and _SYNC_FILE_RANGE is not None
        self._fd = -1
        self._started = 0
        self._written = 0
        # Each range holds its own duplicate of the file's descriptor, so a file
        # can be closed by its writer while its last range is still on its way.
        self._in_flight: deque[tuple[int, int, int]] = deque()
        self._in_flight_bytes = 0

    def start_file(self, fd: int) -> None:
        self.end_file()
        self._fd, self._started, self._written = fd, 0, 0

    def written(self, total: int) -> None:
        """`total`: how many bytes of the current file have been written so far."""
        self._written = total
        if total - self._started >= self._stretch:
            self._start_range()

    def end_file(self) -> None:
        """Starts the writeback of the rest of the current file. Call it before the
        file is closed."""
        if self._fd >= 0 and self._written > self._started:
            self._start_range()
        self._fd = -1

    def close(self) -> None:
        """Forgets the ranges on their way without waiting for them (the caller's
        fsync does that)."""
        self._fd = -1
        while self._in_flight:
            os.close(self._in_flight.popleft()[0])
        self._in_flight_bytes = 0

    def _start_range(self) -> None:
        offset, length = self._started, self._written - self._started
        start_writeback(self._fd, offset, length)
        self._started = self._written
        if not self._drop_behind:
            return
        try:
            fd = os.dup(self._fd)
        except OSError:
            return  # out of descriptors: this range just stays cached
        self._in_flight.append((fd, offset, length))
        self._in_flight_bytes += length
        while len(self._in_flight) > 1 and (
            self._in_flight_bytes > self._window or len(self._in_flight) > self.MAX_RANGES
        ):
            fd, offset, length = self._in_flight.popleft()
            self._in_flight_bytes -= length
            try:
                drop_written(fd, offset, length)
            finally:
                os.close(fd)
