"""A restored copy is a device of its own: it does not carry on the original's backups.

Before, the copy inherited the original's method, folder, schedule and key, and its
scheduler at once wrote into the original's folder, where "keep the newest 2" let the
two devices prune each other's backups.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.backup import engine, service
from app.backup.errors import BackupNotConfigured
from app.store import Store
from app.ui.backup_wizards import BackupScheduler
from tests.backup.conftest import populate
from tests.store.conftest import protector


def _original_with_a_backup(tmp_path: Path) -> tuple[Path, bytes, engine.BackupInfo]:
    profile = tmp_path / "profiles" / "original"
    store = Store.create(profile, protector())
    try:
        populate(store, profile, messages=5, attachment_bytes=1000)
        folder = tmp_path / "Dropbox"
        key = service.set_up_with_key(store, folder, schedule="daily", keep=2)
        info = service.back_up_now(store, profile)
    finally:
        store.close()
    return folder, key, info


def _restore(
    tmp_path: Path, info: engine.BackupInfo, key: bytes, settle: Callable[[Store], object]
) -> tuple[Store, Path]:
    profile = tmp_path / "profiles" / "restored"
    engine.restore_backup(info.path, key, profile, protector())
    store = Store.open(profile, protector())
    settle(store)
    return store, profile


@pytest.mark.parametrize(
    "settle",
    [
        service.settle_after_restore,
        # The earlier name, still called by `cipherline backup restore`.
        lambda store: service.store_key_after_restore(store, bytes(32)),
    ],
    ids=["settle_after_restore", "store_key_after_restore"],
)
def test_restored_copy_has_backups_off_and_writes_nothing_to_the_original_folder(
    qtbot: QtBot, tmp_path: Path, settle: Callable[[Store], object]
) -> None:
    folder, key, info = _original_with_a_backup(tmp_path)
    before = engine.list_backups(folder)
    store, profile = _restore(tmp_path, info, key, settle)
    try:
        state = store.backup_state.get()
        assert state.schedule == "off"
        assert state.method is None
        assert state.folder is None
        assert state.backup_key is None
        assert state.vault_record_id is None
        assert not service.is_due(store, now=info.created + 10 * 86_400)
        with pytest.raises(BackupNotConfigured):
            service.back_up_now(store, profile)
        scheduler = BackupScheduler(store, profile)
        scheduler.check()
        assert not scheduler.running  # nothing was due, no job started
        scheduler.stop()
        assert engine.list_backups(folder) == before
    finally:
        store.close()


def test_settle_after_restore_reports_the_original_settings(tmp_path: Path) -> None:
    folder, key, info = _original_with_a_backup(tmp_path)
    profile = tmp_path / "profiles" / "restored"
    engine.restore_backup(info.path, key, profile, protector())
    store = Store.open(profile, protector())
    try:
        original = service.settle_after_restore(store)
    finally:
        store.close()
    assert original.method == service.METHOD_KEY
    assert original.folder == str(folder)
    assert original.schedule == "daily"
