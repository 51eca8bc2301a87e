"""Issue #20: what the version 1/2 reader must refuse, and how it names it.

Damaged files are built from a real backup made here (or the real version 1
profile vector): its frames re-sealed with one changed, or its bytes altered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.backup import engine
from app.backup import format as fmt
from app.backup.errors import CorruptBackup
from app.store import Store
from tests.store.conftest import protector

KEY = bytes(range(32))
CHUNK = fmt.MIN_CHUNK_SIZE
VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _backup(full_store: tuple[Store, Path], folder: Path) -> Path:
    store, profile = full_store
    info = engine.write_backup(
        store,
        folder,
        KEY,
        method=fmt.METHOD_KEY,
        attachments_dir=profile / "attachments",
        chunk_size=CHUNK,
    )
    return info.path


def _frames(path: Path) -> tuple[int, list[bytes]]:
    data = path.read_bytes()
    header, length = fmt.BackupHeader.parse(data)
    decoder = fmt.BackupDecoder(KEY, header, length)
    frames = [*decoder.feed(data[length:]), *decoder.finish()]
    return header.version, [fmt.frame(f.kind, f.payload) for f in frames]


def _seal(version: int, frames: list[bytes], path: Path) -> Path:
    header = fmt.new_header(KEY, fmt.METHOD_KEY, chunk_size=CHUNK, version=version)
    encoder = fmt.BackupEncoder(KEY, header)
    data = encoder.start()
    for item in frames:
        data += b"".join(encoder.write(item))
    path.write_bytes(data + encoder.finish())
    return path


def _kind(frame: bytes) -> int:
    return frame[0]


def _refused_everywhere(path: Path, tmp_path: Path, match: str) -> CorruptBackup:
    """Verify and restore both refuse `path` at the same byte; nothing is left."""
    with pytest.raises(CorruptBackup, match=match) as verified:
        engine.verify_backup(path, KEY)
    target = tmp_path / "restored"
    with pytest.raises(CorruptBackup, match=match) as restored:
        engine.restore_backup(path, KEY, target, protector())
    assert restored.value.offset == verified.value.offset
    assert not target.exists()
    assert not list(tmp_path.glob(".restored.restoring-*"))
    return verified.value


@pytest.mark.parametrize("source", ["version 2", "version 1"])
def test_a_file_without_its_end_frame_is_refused(
    full_store: tuple[Store, Path], tmp_path: Path, source: str
) -> None:
    real = _backup(full_store, tmp_path / "cloud") if source == "version 2" else None
    version, frames = _frames(real or VECTORS / "backup_v1_profile.clbk")
    last_end = max(i for i, f in enumerate(frames) if _kind(f) == fmt.FRAME_FILE_END)
    del frames[last_end]
    path = _seal(version, frames, tmp_path / "no-end.clbk")
    error = _refused_everywhere(path, tmp_path, "has no end")
    assert error.offset == path.stat().st_size


@pytest.mark.parametrize("source", ["version 2", "version 1"])
def test_the_same_file_name_twice_is_refused_with_a_sentence(
    full_store: tuple[Store, Path], tmp_path: Path, source: str
) -> None:
    real = _backup(full_store, tmp_path / "cloud") if source == "version 2" else None
    version, frames = _frames(real or VECTORS / "backup_v1_profile.clbk")
    start = next(i for i, f in enumerate(frames) if _kind(f) == fmt.FRAME_FILE_START)
    end = next(i for i in range(start, len(frames)) if _kind(frames[i]) == fmt.FRAME_FILE_END)
    twice = [*frames, *frames[start : end + 1]]
    path = _seal(version, twice, tmp_path / "twice.clbk")
    _refused_everywhere(path, tmp_path, r"holds the file \S+ twice")


def test_a_file_where_another_files_folder_is_is_refused(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    version, frames = _frames(_backup(full_store, tmp_path / "cloud"))
    # The real backup holds nested/a2.bin; a file named "nested" cannot sit beside it.
    frames += [
        fmt.frame(fmt.FRAME_FILE_START, b"\x00\x06nested" + (1).to_bytes(8, "big")),
        fmt.frame(fmt.FRAME_FILE_DATA, b"x"),
        fmt.frame(fmt.FRAME_FILE_END, b""),
    ]
    path = _seal(version, frames, tmp_path / "clash.clbk")
    _refused_everywhere(path, tmp_path, "holds the file nested twice")


def test_the_end_of_the_file_is_named_for_what_happened(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    real = _backup(full_store, tmp_path / "cloud")
    data = real.read_bytes()
    _header, header_length = fmt.BackupHeader.parse(data)
    sealed = CHUNK + 16
    last_chunk = header_length + (len(data) - header_length - 1) // sealed * sealed
    path = tmp_path / "damaged.clbk"

    # Few or many bytes appended: named where the real end is, not as a cut.
    for extra in (40, sealed + 7):
        path.write_bytes(data + bytes(extra))
        error = _refused_everywhere(path, tmp_path, "extra data follows the end")
        assert error.offset == len(data)

    flipped = bytearray(data)
    flipped[-3] ^= 0x01
    path.write_bytes(bytes(flipped))
    error = _refused_everywhere(path, tmp_path, "the chunk there is damaged")
    assert error.offset == last_chunk
    assert "extra data" not in str(error)

    path.write_bytes(data[:last_chunk])
    error = _refused_everywhere(path, tmp_path, "ends after chunk .*, not the final one")
    assert error.offset == last_chunk


def test_verify_and_restore_name_the_same_byte_when_the_database_is_missing(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    version, frames = _frames(_backup(full_store, tmp_path / "cloud"))
    database = {fmt.FRAME_DATABASE_START, fmt.FRAME_DATABASE_DATA, fmt.FRAME_DATABASE_END}
    path = _seal(version, [f for f in frames if _kind(f) not in database], tmp_path / "nodb.clbk")
    error = _refused_everywhere(path, tmp_path, "holds no database")
    assert error.offset == path.stat().st_size > 0


def test_a_failed_restore_into_a_new_folder_leaves_no_folder(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    data = _backup(full_store, tmp_path / "cloud").read_bytes()
    path = tmp_path / "cut.clbk"
    path.write_bytes(data[: len(data) // 2])
    target = tmp_path / "profiles" / "new"
    with pytest.raises(CorruptBackup):
        engine.restore_backup(path, KEY, target, protector())
    assert not target.exists()
    assert not list(target.parent.iterdir())


def test_every_stored_vector_is_a_whole_backup(tmp_path: Path) -> None:
    for name in ("backup_v1.json", "backup_v2.json"):
        stored = json.loads((VECTORS / name).read_text())
        key = bytes.fromhex(stored["key"])
        for number, case in enumerate(stored["cases"]):
            path = tmp_path / f"{name}-{number}.clbk"
            path.write_bytes(bytes.fromhex(case["file"]))
            report = engine.verify_backup(path, key)
            assert report.files == 1, name
