"""Writeback pacing and drop-behind, checked against the kernel's own page cache."""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import pytest

from app.store.durability import ReadDropper, WritebackPacer

MiB = 1 << 20
STRETCH = 4 * MiB

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="page-cache residency is read with mincore"
)


def _resident_fraction(path: Path) -> float:
    """How much of a file the page cache holds (mincore on a shared mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    )
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte))
    size = path.stat().st_size
    page = os.sysconf("SC_PAGE_SIZE")
    pages = (size + page - 1) // page
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        assert address not in (None, ctypes.c_void_p(-1).value)
        try:
            vector = (ctypes.c_ubyte * pages)()
            assert libc.mincore(address, size, vector) == 0
            return sum(flag & 1 for flag in vector) / pages
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)


def _write_files(
    folder: Path, sizes: list[int], pacer: WritebackPacer, *, close: bool = True
) -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for number, size in enumerate(sizes):
        path = folder / f"file-{number}.bin"
        with path.open("wb") as handle:
            pacer.start_file(handle.fileno())
            written = 0
            while written < size:
                data = bytes([number % 256]) * min(MiB, size - written)
                handle.write(data)
                written += len(data)
                handle.flush()
                pacer.written(written)
            pacer.end_file()
        paths.append(path)
    if close:
        pacer.close()
    return paths


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@linux_only
def test_drop_behind_leaves_only_the_window_cached_across_files(tmp_path: Path) -> None:
    control = _write_files(tmp_path / "kept", [16 * MiB], WritebackPacer(drop_behind=False))
    if _resident_fraction(control[0]) < 0.9:
        pytest.skip("this file system does not keep written pages cached")
    before = _open_descriptors()
    # Files smaller than a stretch: the pacer works across them, not per file.
    sizes = [3 * MiB] * 10 + [16 * MiB]
    paths = _write_files(
        tmp_path / "dropped", sizes, WritebackPacer(stretch=STRETCH, window=2 * STRETCH)
    )
    assert _open_descriptors() == before  # every duplicated descriptor was closed
    assert all(_resident_fraction(path) < 0.1 for path in paths[:5])
    for number, path in enumerate(paths):
        assert path.read_bytes() == bytes([number % 256]) * sizes[number]


@linux_only
def test_without_drop_behind_the_pacer_holds_no_descriptors(tmp_path: Path) -> None:
    before = _open_descriptors()
    pacer = WritebackPacer(stretch=MiB, drop_behind=False)
    _write_files(tmp_path, [8 * MiB, 3 * MiB], pacer, close=False)
    assert _open_descriptors() == before
    pacer.close()


@linux_only
def test_close_releases_ranges_still_on_their_way(tmp_path: Path) -> None:
    before = _open_descriptors()
    pacer = WritebackPacer(stretch=MiB, window=64 * MiB)
    paths = _write_files(tmp_path, [4 * MiB], pacer, close=False)
    assert _open_descriptors() == before + 4  # four ranges in flight, each with its own
    pacer.close()
    assert _open_descriptors() == before
    assert paths[0].read_bytes() == bytes([0]) * (4 * MiB)


@linux_only
def test_read_dropper_drops_what_was_read_but_the_window(tmp_path: Path) -> None:
    path = tmp_path / "backup.bin"
    with path.open("wb") as handle:
        handle.write(os.urandom(48 * MiB))
        handle.flush()
        os.fsync(handle.fileno())  # dirty pages cannot be dropped; a backup on disk is clean
    path.read_bytes()  # reading it through brings it all into the page cache
    if _resident_fraction(path) < 0.9:
        pytest.skip("this file system does not keep read pages cached")
    with path.open("rb") as handle:
        dropper = ReadDropper(handle.fileno(), window=8 * MiB, stretch=4 * MiB)
        done = 0
        while data := handle.read(MiB):
            done += len(data)
            dropper.consumed(done)
    # Dropped in whole stretches: at most the window and one stretch stay cached.
    assert _resident_fraction(path) <= (8 * MiB + 4 * MiB) / (48 * MiB) + 0.01
