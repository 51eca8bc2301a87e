"""Backup format and files: round trip, every kind of damage, wrong keys, the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.backup import engine
from app.backup import format as fmt
from app.backup.errors import (
    BackupCancelled,
    CorruptBackup,
    InvalidKeyFormat,
    NotABackup,
    ProfileNotEmpty,
    WrongKey,
)
from app.backup.keys import format_key, generate_backup_key, parse_key
from app.store import Store
from tests.backup.conftest import SECRET_TEXT
from tests.store.conftest import protector

KEY = bytes(range(32))


def _backup(store: Store, profile: Path, folder: Path, **kwargs: object) -> engine.BackupInfo:
    return engine.write_backup(
        store,
        folder,
        KEY,
        method=fmt.METHOD_KEY,
        attachments_dir=profile / "attachments",
        chunk_size=4096,
        **kwargs,  # type: ignore[arg-type]
    )


def test_key_is_shown_in_16_groups_and_parsed_forgivingly() -> None:
    key = generate_backup_key()
    shown = format_key(key)
    groups = shown.split(" ")
    assert len(groups) == 16 and all(len(g) == 4 for g in groups)
    assert parse_key(shown) == key
    assert parse_key(shown.upper().replace(" ", "-")) == key
    assert parse_key("\n".join(groups)) == key
    with pytest.raises(InvalidKeyFormat, match="that key is not valid: it has 63 digits"):
        parse_key(shown.replace(" ", "")[:-1])
    with pytest.raises(InvalidKeyFormat, match="only 0-9 and a-f"):
        parse_key("g" + shown[1:])


def test_round_trip_restores_history_and_attachments(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "Dropbox" / "Cipherline"
    info = _backup(store, profile, folder)
    assert info.method == "64-digit key" and info.has_attachments
    raw = info.path.read_bytes()
    assert SECRET_TEXT.encode() not in raw
    assert (profile / "attachments" / "a1.bin").read_bytes()[:64] not in raw
    report = engine.verify_backup(info.path, KEY)
    assert report.version == fmt.VERSION == 2
    assert report.files == 2 and report.database_bytes > 50 * 100 and report.records == 0
    target = tmp_path / "restored"
    result = engine.restore_backup(info.path, KEY, target, protector())
    assert result.counts["messages"] == 50 and result.files == 2
    restored = Store.open(target, protector())
    conversation = restored.conversations.all()[0]
    assert restored.messages.count(conversation.id) == 50
    assert len(restored.messages.search("eagle")) == 50
    assert restored.settings.get("theme") == "dark"
    restored.close()
    for name in ("a1.bin", "nested/a2.bin"):
        assert (target / "attachments" / name).read_bytes() == (
            profile / "attachments" / name
        ).read_bytes()
    assert not list(tmp_path.glob(".restored.restoring-*"))


def test_wrong_key_is_refused_at_once_and_nothing_is_written(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    info = _backup(store, profile, tmp_path / "backups")
    target = tmp_path / "restored"
    with pytest.raises(WrongKey, match="does not open this backup"):
        engine.restore_backup(info.path, bytes(32), target, protector())
    with pytest.raises(WrongKey):
        engine.verify_backup(info.path, bytes(32))
    assert not Store.exists(target)


def test_restore_never_overwrites_an_existing_profile(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    info = _backup(store, profile, tmp_path / "backups")
    before = {p: p.read_bytes() for p in profile.rglob("*") if p.is_file()}
    with pytest.raises(ProfileNotEmpty):
        engine.restore_backup(info.path, KEY, profile, protector())
    assert {p: p.read_bytes() for p in profile.rglob("*") if p.is_file()} == before


def _damaged_variants(data: bytes, header_length: int, chunk: int) -> dict[str, bytes]:
    sealed = chunk + 16
    body = data[header_length:]
    chunks = [body[i : i + sealed] for i in range(0, len(body), sealed)]
    flipped = bytearray(data)
    flipped[header_length + sealed + 5] ^= 0x40
    header_flip = bytearray(data)
    header_flip[20] ^= 1
    return {
        "bit flip in chunk 1": bytes(flipped),
        "header altered": bytes(header_flip),
        "truncated mid-chunk": data[: header_length + sealed + 100],
        "truncated at a chunk boundary": data[: header_length + 2 * sealed],
        "last chunk dropped": data[: len(data) - len(chunks[-1])],
        "chunks swapped": data[:header_length] + chunks[1] + chunks[0] + b"".join(chunks[2:]),
        "chunk duplicated": data[:header_length] + chunks[0] + b"".join(chunks),
        "bytes appended": data + b"\x00" * 40,
    }


def test_every_kind_of_damage_is_named_with_an_offset_and_restores_nothing(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    info = _backup(store, profile, tmp_path / "backups")
    data = info.path.read_bytes()
    _header, header_length = fmt.BackupHeader.parse(data)
    for name, damaged in _damaged_variants(data, header_length, 4096).items():
        path = tmp_path / "damaged.clbk"
        path.write_bytes(damaged)
        expected: type[Exception] = WrongKey if name == "header altered" else CorruptBackup
        with pytest.raises(expected) as error:
            engine.verify_backup(path, KEY)
        if isinstance(error.value, CorruptBackup):
            assert error.value.offset >= header_length, name
            assert f"{error.value.offset:,}" in str(error.value)
        target = tmp_path / f"restore-{name.replace(' ', '-')}"
        with pytest.raises(expected):
            engine.restore_backup(path, KEY, target, protector())
        assert not Store.exists(target), name
        assert not list(tmp_path.glob(".restore-*")), name


def test_splicing_chunks_between_two_backups_fails(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    first = _backup(store, profile, tmp_path / "a").path.read_bytes()
    second = _backup(store, profile, tmp_path / "b").path.read_bytes()
    _h, length = fmt.BackupHeader.parse(first)
    sealed = 4096 + 16
    spliced = first[: length + sealed] + second[length + sealed :]
    path = tmp_path / "spliced.clbk"
    path.write_bytes(spliced)
    with pytest.raises(CorruptBackup) as error:
        engine.verify_backup(path, KEY)
    assert error.value.offset == length + sealed


def test_not_a_backup_and_newer_versions_are_named(tmp_path: Path) -> None:
    path = tmp_path / "x.clbk"
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(NotABackup, match="not a Cipherline backup"):
        engine.verify_backup(path, KEY)
    header = fmt.new_header(KEY, fmt.METHOD_KEY).to_bytes()
    path.write_bytes(header[:4] + b"\x09" + header[5:])
    with pytest.raises(NotABackup, match="version 9"):
        engine.verify_backup(path, KEY)
    path.write_bytes(header[:30])
    with pytest.raises(CorruptBackup):
        engine.verify_backup(path, KEY)


def test_folder_keeps_the_newest_two_and_a_cancel_leaves_them(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    made = [_backup(store, profile, folder) for _ in range(3)]
    kept = engine.list_backups(folder)
    assert [b.path for b in kept] == [made[2].path, made[1].path]
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(BackupCancelled):
        _backup(store, profile, folder, cancelled=lambda: True)
    assert sorted(p.name for p in folder.iterdir()) == before
    for info in kept:
        engine.verify_backup(info.path, KEY)


def test_not_enough_space_is_checked_first(
    full_store: tuple[Store, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, profile = full_store

    class Usage:
        free = 1024

    monkeypatch.setattr(engine.shutil, "disk_usage", lambda _p: Usage())
    with pytest.raises(engine.NotEnoughSpace, match="MB free"):
        _backup(store, profile, tmp_path / "full")
    assert not any((tmp_path / "full").iterdir())


def test_cloud_folders_are_found_under_home(tmp_path: Path) -> None:
    (tmp_path / "Dropbox").mkdir()
    (tmp_path / "Nextcloud").mkdir()
    found = engine.find_cloud_folders(tmp_path)
    assert [service for service, _path in found] == ["Dropbox", "Nextcloud"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=2999))
def test_decoder_gives_only_its_own_errors_on_any_input(junk: bytes, cut: int) -> None:
    header = fmt.new_header(KEY, fmt.METHOD_KEY, chunk_size=fmt.MIN_CHUNK_SIZE)
    encoder = fmt.BackupEncoder(KEY, header)
    good = (
        encoder.start() + b"".join(encoder.write(fmt.record_frame("t", b"{}"))) + encoder.finish()
    )
    for data in (junk, good[:cut] + junk, good + junk[:1]):
        try:
            parsed, length = fmt.BackupHeader.parse(data)
            decoder = fmt.BackupDecoder(KEY, parsed, length)
            list(decoder.feed(data[length:]))
            list(decoder.finish())
        except (CorruptBackup, NotABackup, WrongKey):
            continue


def test_a_partial_left_by_a_killed_backup_does_not_block_the_next(
    full_store: tuple[Store, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    folder.mkdir()
    monkeypatch.setattr(engine.time, "time", lambda: 1_790_000_000.0)
    # What a backup killed earlier in the same second leaves behind.
    (folder / ".cipherline-20260921-141320.clbk.partial").write_bytes(b"half a backup")
    info = _backup(store, profile, folder)
    assert info.path.name == "cipherline-20260921-141320-1.clbk"
    engine.verify_backup(info.path, KEY)
