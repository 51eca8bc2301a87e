"""Issue #24: everything the store writes is the user's alone, whatever the umask.

Files (the database, its -wal and -shm, the key file, backup images, the server
config and relay CA) are 0600; the profile folder, `profiles/` and the data root
are 0700. Profiles left looser by older versions are tightened when opened.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import ServerConfig, ensure_profile_dir, write_ca_file
from app.store import Store
from tests.store.conftest import protector


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    """The permission bits of `root` and of everything under it, by relative path."""
    found = {".": stat.S_IMODE(root.lstat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _assert_private(root: Path) -> None:
    wrong = {
        name: oct(mode)
        for name, mode in _modes(root).items()
        if mode != (0o700 if (root / name).is_dir() else 0o600)
    }
    assert wrong == {}


def _write_messages(store: Store, count: int = 50, peer: str = "bob") -> None:
    conversation = store.conversations.direct(peer, now=1)
    for number in range(count):
        store.messages.add(
            conversation_id=conversation.id,
            uuid=f"{peer}-{number}",
            sender=peer,
            outgoing=False,
            body=f"message {number}",
            sent_at=1_000 + number,
            status="received",
        )


def test_everything_under_the_data_root_is_private_with_a_loose_umask(
    tmp_path: Path, loose_umask: None
) -> None:
    root = tmp_path / "home" / "cipherline"
    profile = ensure_profile_dir("alice", root)
    ServerConfig("https://127.0.0.1:1", "CA").save(profile / "server.json")
    write_ca_file(profile, ServerConfig("https://127.0.0.1:1", "CA"))
    store = Store.create(profile, protector())
    try:
        _write_messages(store)
        names = {path.name for path in profile.iterdir()}
        assert {"store.db", "store.db-wal", "store.db-shm", "store.key"} <= names
        image = store.export_image()
        try:
            assert image.path.exists()
            _assert_private(root)
        finally:
            image.discard()
        _assert_private(root)
    finally:
        store.close()
    _assert_private(root)


def test_a_store_created_in_a_missing_folder_makes_it_private(
    tmp_path: Path, loose_umask: None
) -> None:
    profile = tmp_path / "a" / "b" / "profile"
    store = Store.create(profile, protector())
    try:
        _write_messages(store)
        assert (profile / "store.db-wal").exists()
        _assert_private(tmp_path / "a")
    finally:
        store.close()


def test_a_loose_existing_profile_is_tightened_when_opened(
    tmp_path: Path, loose_umask: None
) -> None:
    root = tmp_path / "cipherline"
    profile = ensure_profile_dir("alice", root)
    store = Store.create(profile, protector())
    _write_messages(store)
    store.close()
    # What older versions left behind: folders 0755, files 0644.
    (profile / "attachments").mkdir()
    (profile / "attachments" / "blob.enc").write_bytes(b"ciphertext")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)

    assert ensure_profile_dir("alice", root) == profile
    reopened = Store.open(profile, protector())
    try:
        _write_messages(reopened, 5, peer="carol")
        assert (profile / "store.db-wal").exists()
        _assert_private(root)
    finally:
        reopened.close()


def test_tightening_leaves_symbolic_links_and_their_targets_alone(
    tmp_path: Path, loose_umask: None
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    outside.chmod(0o644)
    profile = tmp_path / "profile"
    Store.create(profile, protector()).close()
    (profile / "link").symlink_to(outside)
    Store.open(profile, protector()).close()
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
