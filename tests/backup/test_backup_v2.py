"""Format version 2: the store travels as a database image under its own key.

What it must keep: old (version 1) backups still restore; the image is opened only
after the whole file authenticated, only if it has our structure, and the restored
store gets a key of its own; nothing of the copy stays beside the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlcipher3.dbapi2 as sqlcipher

from app.backup import engine
from app.backup import format as fmt
from app.backup.errors import BackupCancelled, CorruptBackup
from app.store import Store
from app.store.database import IMAGE_HMAC, IMAGE_PREFIX, RESTORED_ADD, RESTORED_DEVICE_SETTING
from tests.backup.conftest import SECRET_TEXT
from tests.store.conftest import protector

KEY = bytes(range(32))
VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _backup(store: Store, profile: Path, folder: Path) -> engine.BackupInfo:
    return engine.write_backup(
        store, folder, KEY, method=fmt.METHOD_KEY, attachments_dir=profile / "attachments"
    )


def _decode(path: Path) -> list[fmt.Frame]:
    data = path.read_bytes()
    header, length = fmt.BackupHeader.parse(data)
    decoder = fmt.BackupDecoder(KEY, header, length)
    return [*decoder.feed(data[length:]), *decoder.finish()]


def _seal(frames: list[bytes], path: Path) -> Path:
    header = fmt.new_header(KEY, fmt.METHOD_KEY, chunk_size=fmt.MIN_CHUNK_SIZE)
    encoder = fmt.BackupEncoder(KEY, header)
    data = encoder.start()
    for item in frames:
        data += b"".join(encoder.write(item))
    path.write_bytes(data + encoder.finish())
    return path


def _image_frames(image: bytes, key: bytes, schema: int = 2) -> list[bytes]:
    entry = fmt.DatabaseImage(schema=schema, page_size=4096, size=len(image), key=key)
    return [
        entry.to_frame(),
        fmt.frame(fmt.FRAME_DATABASE_DATA, image),
        fmt.frame(fmt.FRAME_DATABASE_END, b""),
    ]


def test_vectors_of_both_versions_are_reproduced_and_decode() -> None:
    from scripts.gen_backup_vectors import VECTORS_BY_VERSION, build

    for version, path in VECTORS_BY_VERSION.items():
        stored = json.loads(path.read_text())
        assert build(version) == stored
        key = bytes.fromhex(stored["key"])
        for case in stored["cases"]:
            data = bytes.fromhex(case["file"])
            header, length = fmt.BackupHeader.parse(data)
            assert header.version == version
            decoder = fmt.BackupDecoder(key, header, length)
            decoded = [*decoder.feed(data[length:]), *decoder.finish()]
            assert [fmt.frame(f.kind, f.payload).hex() for f in decoded] == stored["frames"]


def test_a_version_1_backup_still_restores(tmp_path: Path) -> None:
    # Written by Cipherline before format version 2 (40 messages, two attachments).
    old = VECTORS / "backup_v1_profile.clbk"
    report = engine.verify_backup(old, KEY)
    assert report.version == 1 and report.records > 40 and report.files == 2
    result = engine.restore_backup(old, KEY, tmp_path / "restored", protector())
    assert result.counts["messages"] == 40
    restored = Store.open(tmp_path / "restored", protector())
    try:
        assert len(restored.messages.search("eagle")) == 40
        assert restored.settings.get("theme") == "dark"
    finally:
        restored.close()
    attachments = tmp_path / "restored" / "attachments"
    assert (attachments / "a1.bin").read_bytes() == bytes(range(256)) * 40
    assert (attachments / "nested" / "a2.bin").read_bytes() == b"small file"


def test_the_restored_store_has_its_own_key_and_no_outbox(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    store.outbox.add("queued-1", None, "bob", 1, b"ciphertext waiting", now=5)
    info = _backup(store, profile, tmp_path / "cloud")
    frames = _decode(info.path)
    entry = fmt.DatabaseImage.parse(
        next(f.payload for f in frames if f.kind == fmt.FRAME_DATABASE_START)
    )
    report = engine.restore_backup(info.path, KEY, tmp_path / "restored", protector())
    restored = Store.open(tmp_path / "restored", protector())
    try:
        assert restored.outbox.pending() == []
        assert restored.messages.search("eagle")
        # Counted from the image during the copy: the same as the store it became,
        # but for the marker that makes the copy a device of its own at its first
        # start (app/services/account.py, `settle_restored_device`).
        assert restored.settings.get(RESTORED_DEVICE_SETTING) == RESTORED_ADD
        counts = restored.table_counts()
        counts["settings"] -= 1
        assert report.counts == counts
        assert report.counts["messages"] == store.table_counts()["messages"] > 0
    finally:
        restored.close()
    # Whoever holds the backup (and so the image key) cannot open this device's store.
    connection = sqlcipher.connect(str(tmp_path / "restored" / "store.db"))
    connection.execute(f"PRAGMA key = \"x'{entry.key.hex()}'\"")
    with pytest.raises(sqlcipher.DatabaseError):
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    connection.close()


def test_the_copy_never_stays_beside_the_store(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    # One left by a backup process that died: its key died with it.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    stale = profile / f"{IMAGE_PREFIX}{dead.stdout.strip()}-1.db"
    stale.write_bytes(os.urandom(4096))
    _backup(store, profile, tmp_path / "cloud")
    assert not list(profile.glob(f"{IMAGE_PREFIX}*"))
    # A copy never holds plaintext, not even for the moment it exists.
    image = store.export_image()
    try:
        assert SECRET_TEXT.encode() not in image.path.read_bytes()
        assert image.path.stat().st_mode & 0o077 == 0
    finally:
        image.discard()
    assert not list(profile.glob(f"{IMAGE_PREFIX}*"))


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no database", "holds no database"),
        ("a record in version 2", "unexpected frame type 1"),
        ("an end that is not empty", "does not match its entry"),
        ("two databases", "second database"),
        ("longer than it says", "longer than it says"),
        ("not our structure", "structure"),
        ("wrong image key", "does not open"),
    ],
)
def test_a_bad_database_entry_is_refused_and_nothing_is_restored(
    tmp_path: Path, case: str, message: str
) -> None:
    foreign = tmp_path / "foreign.db"
    image_key = os.urandom(32)
    connection = sqlcipher.connect(str(foreign))
    connection.execute(f"PRAGMA key = \"x'{image_key.hex()}'\"")
    connection.execute(f"PRAGMA cipher_hmac_algorithm = {IMAGE_HMAC}")
    connection.execute("CREATE TABLE messages (body TEXT)")
    connection.execute("INSERT INTO messages VALUES ('hello')")
    connection.close()
    image = foreign.read_bytes()
    good = _image_frames(image, image_key)
    frames = {
        "no database": [],
        "a record in version 2": [fmt.record_frame("messages", b"{}"), *good],
        "an end that is not empty": [*good[:2], fmt.frame(fmt.FRAME_DATABASE_END, bytes(32))],
        "two databases": [*good, *good],
        "longer than it says": [good[0], *good[1:2], *good[1:]],
        "not our structure": good,
        "wrong image key": _image_frames(image, os.urandom(32)),
    }[case]
    path = _seal(frames, tmp_path / "crafted.clbk")
    if case not in {"not our structure", "wrong image key"}:
        with pytest.raises(CorruptBackup, match=message):
            engine.verify_backup(path, KEY)
    with pytest.raises(CorruptBackup, match=message):
        engine.restore_backup(path, KEY, tmp_path / "restored", protector())
    assert not Store.exists(tmp_path / "restored")
    assert not list(tmp_path.glob(".restored.restoring-*"))


def test_a_backup_from_a_newer_schema_is_refused_before_opening(tmp_path: Path) -> None:
    path = _seal(_image_frames(bytes(4096), os.urandom(32), schema=99), tmp_path / "new.clbk")
    with pytest.raises(CorruptBackup, match="newer Cipherline"):
        engine.restore_backup(path, KEY, tmp_path / "restored", protector())
    assert not Store.exists(tmp_path / "restored")


def test_image_keys_never_show_in_a_repr(full_store: tuple[Store, Path]) -> None:
    store, _profile = full_store
    image = store.export_image()
    try:
        entry = fmt.DatabaseImage(image.schema, image.page_size, image.size, image.key)
        for shown in (repr(image), repr(entry), str(entry)):
            assert image.key.hex() not in shown and repr(image.key) not in shown
    finally:
        image.discard()


def test_a_restore_cancelled_while_the_store_is_rebuilt_leaves_nothing(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    info = _backup(store, profile, tmp_path / "cloud")
    target = tmp_path / "restored"
    # Cancel is asked after each read; the database comes first, so by then the
    # store is being rebuilt on the other thread, which the cancel must wait for.
    with pytest.raises(BackupCancelled):
        engine.restore_backup(info.path, KEY, target, protector(), cancelled=lambda: True)
    assert not Store.exists(target)
    assert not list(tmp_path.glob(".restored.restoring-*"))
    engine.restore_backup(info.path, KEY, target, protector())
    assert Store.exists(target)


def test_a_failed_file_write_fails_the_restore_and_leaves_nothing(
    full_store: tuple[Store, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, profile = full_store
    info = _backup(store, profile, tmp_path / "cloud")

    def disk_full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    # File writes happen on the restore's writer thread; its failure must reach here.
    monkeypatch.setattr(engine, "_write_piece", disk_full)
    target = tmp_path / "restored"
    with pytest.raises(OSError, match="No space left"):
        engine.restore_backup(info.path, KEY, target, protector())
    assert not Store.exists(target)
    assert not list(tmp_path.glob(".restored.restoring-*"))
