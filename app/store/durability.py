"""Getting bytes onto the disk: atomic replacement, directory fsync, early writeback.

Linux holds up to a tenth of memory as dirty pages before it writes any back on
its own, so a program that writes a gigabyte and then calls fsync does all its
CPU work first and only then waits for the disk. `WritebackPacer` asks the kernel
to start writing each finished stretch at once (without waiting, and without the
device cache flush an fsync costs), so the disk works while the program goes on;
the final fsync then has little left to do.
"""

from __future__ import annotations

import ctypes
import os
import sys
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
_SYNC_FILE_RANGE_WRITE = 2


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


class WritebackPacer:
    """Tracks how far a file has been written and starts writeback every stretch."""

    def __init__(self, fd: int, stretch: int = WRITEBACK_STRETCH) -> None:
        self._fd = fd
        self._stretch = stretch
        self._started = 0

    def written(self, total: int) -> None:
        if total - self._started >= self._stretch:
            start_writeback(self._fd, self._started, total - self._started)
            self._started = total
