"""After a scripted session, no secret is readable anywhere we write.

Two people message through a real relay; alice backs up with a password through
the vault (SoftHSM2) and restores onto a "new machine". Then every file the relay,
the vault node, both profiles, the restored profile and the cloud folder wrote —
databases, WAL files, logs, audit logs, key files, backups, temp files under the
test's directory — is searched for the plaintexts, passwords, passphrases and the
backup key (raw, hex and as the 64-digit groups).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from app.backup import engine, service
from app.backup.keys import format_key
from app.config import SERVER_CONFIG_NAME, ServerConfig, VaultNodeKey
from app.store import PassphraseProtector, Store
from tests.services.helpers import FAST_KDF, Person, wait_for
from tests.support.components import RelayProcess, VaultProcess

SECRET_MESSAGES = [
    "the quarterly numbers are terrible, tell no one",
    "my bank PIN is 4921",
    "meet at the north gate at 22:10",
]
BACKUP_PASSWORD = "tangerine-submarine-lantern-oxbow-42"
NEW_MACHINE_PASSPHRASE = "another machine's passphrase"


def _all_bytes(roots: list[Path]) -> list[tuple[Path, bytes]]:
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found.append((path, path.read_bytes()))
    return found


def test_no_secret_in_any_file_after_messaging_backup_and_restore(
    tmp_path: Path,
    vault_node: VaultProcess,
    relay_factory: Callable[..., RelayProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Temp files of this process land inside the scanned tree.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    relay = relay_factory(extra_args=["--vault", vault_node.url])
    config = ServerConfig(
        relay.url, relay.ca_file.read_text(), (VaultNodeKey(**vault_node.public_keys()),)
    )
    alice = Person(tmp_path, "alice", relay)
    bob = Person(tmp_path, "bob", relay)
    try:
        config.save(alice.profile.path / SERVER_CONFIG_NAME)
        conversation = alice.client.start_direct("bob").result(30)
        for text in SECRET_MESSAGES:
            alice.client.send_text(conversation.conversation_id, text).result(30)

        def bob_has_all() -> bool:
            views = [c for c in bob.client.conversations().result() if c.title == "alice"]
            if not views:
                return False
            _view, messages = bob.client.open_conversation(views[0].conversation_id).result()
            return {m.body for m in messages} >= set(SECRET_MESSAGES)

        wait_for(bob_has_all, what="bob receives every message")
        store = alice.client.messenger.store
        access = service.VaultAccess(config, alice.profile.path)
        folder = tmp_path / "home" / "Dropbox"

        def back_up() -> engine.BackupInfo:
            service.set_up_with_password(store, access, BACKUP_PASSWORD, folder)
            return service.back_up_now(store, alice.profile.path)

        info = alice.client.core(back_up).result(60)
        backup_key = store.backup_state.get().backup_key
        assert backup_key is not None
    finally:
        alice.stop()
        bob.stop()

    new_profile = tmp_path / "profiles" / "alice-new-machine"
    new_profile.mkdir(parents=True)
    config.save(new_profile / SERVER_CONFIG_NAME)
    key = service.key_for(
        info, password=BACKUP_PASSWORD, access=service.VaultAccess(config, new_profile)
    )
    assert key == backup_key
    protector = PassphraseProtector(NEW_MACHINE_PASSPHRASE, FAST_KDF)
    engine.restore_backup(info.path, key, new_profile, protector)
    restored = Store.open(new_profile, protector)
    assert len(restored.messages.search("quarterly")) == 1
    restored.close()
    vault_node.stop()
    relay.stop()

    secrets = [text.encode() for text in SECRET_MESSAGES] + [
        BACKUP_PASSWORD.encode(),
        NEW_MACHINE_PASSPHRASE.encode(),
        b"alice passphrase",
        b"bob passphrase",
        backup_key,
        backup_key.hex().encode(),
        format_key(backup_key).encode(),
    ]
    files = _all_bytes([tmp_path])
    names = {path.name for path, _data in files}
    # The scan really covers what was written.
    assert {"relay.log", "vault.log", "audit.log", "store.db", "store.key"} <= names
    assert info.path.name in names
    for path, data in files:
        for secret in secrets:
            assert secret not in data, f"{secret[:12]!r}… found in {path}"
