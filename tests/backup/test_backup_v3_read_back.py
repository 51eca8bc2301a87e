"""Version 3 packs are read back from the disk as they are written: a pack the disk
does not give back byte for byte fails the backup, before any index or snapshot
names it. The read-back authenticates every blob and compares the clear header
instead of hashing the whole pack again; these cases show that it still notices
every kind of change a re-hash would."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.backup import format as fmt
from app.backup import format_v3 as v3
from app.backup import snapshots
from app.backup.errors import CorruptBackup

KEY = bytes(range(32))


def _flip(at: Callable[[int], int]) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        data = bytearray(path.read_bytes())
        data[at(len(data))] ^= 0x01
        path.write_bytes(bytes(data))

    return damage


def _append(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"\x00")


def _cut(path: Path) -> None:
    os.truncate(path, path.stat().st_size - 1)


# Forty small chunks, or three of 4 MiB: a pack over twice READ_PIECE is read back
# in two halves at once (the second on a helper thread).
SMALL = [4000 + number for number in range(40)]
LARGE = [4 << 20, 4 << 20, 4 << 20]


def _write_packs(
    root: Path, damage: Callable[[Path], None] | None, sizes: list[int] = SMALL
) -> snapshots._PackWriter:
    damaged: list[Path] = []

    def checkpoint(what: str) -> None:
        # Runs on the writer thread once a pack is on the disk, before its read-back.
        if damage is not None and what.startswith("wrote") and not damaged:
            (path,) = (root / "data").rglob("[0-9a-f]" * 64)
            damage(path)
            damaged.append(path)

    repo = snapshots.Repository(root, checkpoint)
    repo.create()
    writer = snapshots._PackWriter(repo, KEY, fmt.METHOD_KEY, b"", write_behind=True)
    id_key = v3.chunk_id_key(KEY)
    for size in sizes:
        plain = os.urandom(size)
        writer.add(v3.chunk_id(id_key, plain), plain)
    writer.flush()
    return writer


@pytest.mark.parametrize("sizes", [SMALL, LARGE], ids=["small", "large"])
def test_an_undamaged_pack_reads_back_and_its_name_is_its_sha256(
    tmp_path: Path, sizes: list[int]
) -> None:
    writer = _write_packs(tmp_path, None, sizes)
    writer.finish()
    (entry,) = writer.written
    path = snapshots.Repository(tmp_path).pack_path(entry.pack_id)
    assert path.exists()
    # The full check (a re-hash, every blob, every id) agrees with the read-back.
    wanted = {blob.chunk_id for blob in entry.blobs}
    assert (
        snapshots._check_pack(snapshots.Repository(tmp_path), KEY, entry.pack_id, wanted, entry)
        == path.stat().st_size
    )


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_flip(lambda length: 5), id="header-byte"),
        pytest.param(_flip(lambda length: 40), id="header-salt"),
        pytest.param(_flip(lambda length: length // 2), id="blob-byte"),
        pytest.param(_flip(lambda length: length - 1), id="last-tag-byte"),
        pytest.param(_append, id="byte-appended"),
        pytest.param(_cut, id="byte-cut"),
        # Either side of where a large pack's second half starts.
        pytest.param(_flip(lambda length: min(snapshots.READ_PIECE, length) - 1), id="piece-end"),
        pytest.param(_flip(lambda length: min(snapshots.READ_PIECE, length - 1)), id="piece-next"),
    ],
)
@pytest.mark.parametrize("sizes", [SMALL, LARGE], ids=["small", "large"])
def test_a_pack_the_disk_changed_fails_the_read_back(
    tmp_path: Path, damage: Callable[[Path], None], sizes: list[int]
) -> None:
    writer = _write_packs(tmp_path, damage, sizes)
    with pytest.raises(CorruptBackup, match=r"read back|fails authentication|does not"):
        writer.finish()
    assert writer.written == []
