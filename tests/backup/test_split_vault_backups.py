"""Password backups on the split vault, through the relay as the app reaches it:
new records go to the three domains, records in the single vault keep working and
move over at the owner's word."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from app.backup import service
from app.config import ServerConfig, VaultNodeKey
from app.protocol.vault import RecordNotFound, WrongPassword
from app.store import Store
from tests.backup.conftest import populate
from tests.store.conftest import protector
from tests.support.components import RelayProcess, SoftHSMToken, VaultProcess

PASSWORD = "walrus lantern backup sepia fjord"

Stack = tuple[ServerConfig, ServerConfig, list[VaultProcess]]


@pytest.fixture
def stack(
    tmp_path: Path,
    vault_factory: Callable[..., VaultProcess],
    relay_factory: Callable[..., RelayProcess],
) -> Stack:
    return split_stack(tmp_path, vault_factory, relay_factory)


def split_stack(
    tmp_path: Path,
    vault_factory: Callable[..., VaultProcess],
    relay_factory: Callable[..., RelayProcess],
) -> Stack:
    """The single vault and three split-vault domains behind one relay; the server
    config of an app from before the split vault, and of one that pins it."""

    def node(name: str) -> VaultProcess:
        return vault_factory(
            name, backend="softhsm", token=SoftHSMToken(tmp_path / f"token-{name}").create()
        )

    single = node("single")
    domains = [node(f"domain-{number}") for number in (1, 2, 3)]
    # As make run serves them: each its number and the other two's keys pinned.
    hpke = [domain.public_keys()["hpke_public_key"] for domain in domains]
    for number, domain in enumerate(domains, 1):
        peers = [f"{peer}={key}" for peer, key in enumerate(hpke, 1) if peer != number]
        domain.restart(["--domain", str(number), *[a for p in peers for a in ("--peer-domain", p)]])
    relay = relay_factory(
        extra_args=[
            "--vault",
            single.url,
            *[
                arg
                for number, domain in enumerate(domains, 1)
                for arg in ("--vault-domain", f"{number}={domain.url}")
            ],
        ]
    )
    before = ServerConfig(
        relay.url, relay.ca_file.read_text(), (VaultNodeKey(**single.public_keys()),)
    )
    after = replace(
        before,
        vault_domains=tuple((VaultNodeKey(**domain.public_keys()),) for domain in domains),
    )
    return before, after, domains


def _store(tmp_path: Path, name: str) -> tuple[Store, Path]:
    profile = tmp_path / name
    store = Store.create(profile, protector())
    populate(store, profile, messages=5)
    return store, profile


def test_a_new_password_backup_is_split_and_survives_a_domain_down(
    stack: Stack, tmp_path: Path
) -> None:
    _before, after, domains = stack
    store, profile = _store(tmp_path, "alice")
    try:
        access = service.VaultAccess(after, profile)
        service.set_up_with_password(store, access, PASSWORD, tmp_path / "cloud")
        state = store.backup_state.get()
        assert state.vault_record_id and state.backup_key
        record_id = bytes.fromhex(state.vault_record_id)
        assert store.settings.get(service.VAULT_SETTING) == "split"
        assert not service.split_vault_move_due(store, access)
        assert access.retrieve(record_id, PASSWORD) == state.backup_key
        assert all("answering" in line for line in access.domain_status())
        domains[1].kill()
        status = access.domain_status()
        assert "not answering" in status[1] and "not answering" not in status[0]
        # Two domains are enough: the dead one's pinned key seals requests it never gets.
        assert access.retrieve(record_id, PASSWORD) == state.backup_key
        with pytest.raises(WrongPassword):
            access.retrieve(record_id, "not the password")
    finally:
        store.close()


def test_a_single_vault_record_keeps_working_and_moves_to_the_split_vault(
    stack: Stack, tmp_path: Path
) -> None:
    before, after, _domains = stack
    store, profile = _store(tmp_path, "bob")
    try:
        service.set_up_with_password(
            store, service.VaultAccess(before, profile), PASSWORD, tmp_path / "cloud"
        )
        old_state = store.backup_state.get()
        assert old_state.vault_record_id and old_state.backup_key
        old_id = bytes.fromhex(old_state.vault_record_id)
        access = service.VaultAccess(after, profile)
        # Looked for in the split vault first (not there, nothing spent), then found.
        assert access.retrieve(old_id, PASSWORD) == old_state.backup_key
        assert service.split_vault_move_due(store, access)
        with pytest.raises(WrongPassword):
            service.move_to_split_vault(store, access, "not the password")
        assert store.backup_state.get().vault_record_id == old_state.vault_record_id
        service.move_to_split_vault(store, access, PASSWORD)
        moved = store.backup_state.get()
        assert moved.vault_record_id and moved.vault_record_id != old_state.vault_record_id
        assert moved.backup_key == old_state.backup_key
        assert not service.split_vault_move_due(store, access)
        new_id = bytes.fromhex(moved.vault_record_id)
        assert access.retrieve(new_id, PASSWORD) == moved.backup_key
        # Backups written before name the old record, which still opens them.
        assert access.retrieve(old_id, PASSWORD) == moved.backup_key
        # A password change and turning off reach the split record.
        service.change_password(store, access, PASSWORD, PASSWORD + " changed")
        assert access.retrieve(new_id, PASSWORD + " changed") == moved.backup_key
        service.turn_off(store, access, PASSWORD + " changed")
        with pytest.raises(RecordNotFound):
            access.retrieve(new_id, PASSWORD + " changed")
    finally:
        store.close()
