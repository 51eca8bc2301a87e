"""A restored profile can connect (issue #20): the restore writes its server.json.

The relay is the one the user chose (`--server-config`, the wizard's launcher), else
the profile folder's own, else the one the backup recorded in the store at backup
time (app/backup/server_record.py). Here a backup is restored on the same machine
into a brand-new profile folder, through the engine API and through the CLI, and
the restored profile then sends a message through the real relay.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.backup import engine, server_record, service
from app.backup import format as fmt
from app.backup.keys import format_key
from app.cli import main
from app.config import SERVER_CONFIG_NAME, ServerConfig, profile_dir
from app.services.account import Profile, protector_for
from app.services.client import Client
from app.services.messenger import Messenger
from app.store import PassphraseProtector, Protector, Store
from tests.services.helpers import FAST_KDF, Person, wait_for
from tests.store.conftest import protector
from tests.support.components import RelayProcess

PASSPHRASE = "alice passphrase"


@pytest.fixture
def pair(tmp_path: Path, relay: RelayProcess) -> Iterator[tuple[Person, Person]]:
    """Alice and Bob on the relay, both pinning its sender-certificate key, who
    have already talked once."""
    alice = Person(tmp_path, "alice", relay, sealed=True)
    bob = Person(tmp_path, "bob", relay, sealed=True)
    try:
        alice.client.start_direct("bob").result(20)
        _send(alice.client, "bob", "before the backup")
        _arrives(bob.client, "alice", "before the backup")
        yield alice, bob
    finally:
        for person in (alice, bob):
            if not person.client._stop.is_set():
                person.stop()


def _conversation(client: Client, title: str) -> int | None:
    for conversation in client.conversations().result():
        if conversation.title == title:
            return conversation.conversation_id
    return None


def _send(client: Client, title: str, body: str) -> None:
    conversation_id = _conversation(client, title)
    assert conversation_id is not None
    client.send_text(conversation_id, body).result(20)


def _arrives(client: Client, title: str, body: str) -> None:
    def texts() -> list[str]:
        conversation_id = _conversation(client, title)
        if conversation_id is None:
            return []
        _view, messages = client.open_conversation(conversation_id).result()
        return [m.body for m in messages if not m.system]

    wait_for(lambda: body in texts(), what=f"{body!r} arrives")


def _back_up(alice: Person, folder: Path) -> tuple[bytes, Path]:
    """Alice's backup, written by the backup service; Alice's device then stops."""
    store = alice.client.messenger.store
    key = alice.client.core(service.set_up_with_key, store, folder).result()
    path = alice.client.core(service.back_up_now, store, alice.profile.path).result().path
    alice.stop()
    return key, path


def _open_and_send(profile_path: Path, guard: Protector, bob: Person, body: str) -> None:
    """Opens the restored profile exactly as the app does (Profile.load reads its
    server.json) and sends Bob a message through the relay."""
    profile = Profile.load(profile_path)
    store = Store.open(profile_path, guard)
    service.settle_after_restore(store)
    client = Client(Messenger(store, profile_path), profile.relay(timeout=3), tick_seconds=0.2)
    client.start()
    try:
        _send(client, "bob", body)
        _arrives(bob.client, "alice", body)
    finally:
        client.stop()


def test_the_engine_restores_into_a_new_folder_with_the_relay_the_backup_recorded(
    pair: tuple[Person, Person], tmp_path: Path
) -> None:
    alice, bob = pair
    original = alice.profile.config
    assert original.sender_certificate_keys  # the pinning the restore must keep
    key, backup = _back_up(alice, tmp_path / "Dropbox" / "Cipherline")

    # A brand-new folder: no server.json, no relay CA, nothing chosen.
    fresh = tmp_path / "new-machine" / "profiles" / "alice"
    assert not fresh.exists()
    guard = protector_for(fresh, PASSPHRASE, FAST_KDF)
    report = engine.restore_backup(backup, key, fresh, guard)

    assert report.server_config == original
    assert ServerConfig.load(fresh / SERVER_CONFIG_NAME) == original
    assert (fresh / "relay-ca.pem").read_text() == original.relay_ca_pem
    _open_and_send(fresh, guard, bob, "after the restore, engine")


def test_the_cli_restores_with_the_server_config_the_user_chose(
    pair: tuple[Person, Person],
    tmp_path: Path,
    relay: RelayProcess,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice, bob = pair
    # The backup records a config that pins no sender-certificate key; the one
    # chosen for the restore does, so the restored file shows whose it is.
    recorded = ServerConfig(alice.profile.config.relay_url, alice.profile.config.relay_ca_pem)
    recorded.save(alice.profile.path / SERVER_CONFIG_NAME)
    key, backup = _back_up(alice, tmp_path / "Dropbox" / "Cipherline")
    chosen = ServerConfig(
        relay.url,
        relay.ca_file.read_text(),
        sender_certificate_keys=(relay.sender_certificate_key,),
    )
    assert chosen != recorded
    chosen_path = tmp_path / "chosen-server.json"
    chosen.save(chosen_path)

    fresh = profile_dir("alice-restored")
    assert not fresh.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{PASSPHRASE}\n{format_key(key)}\n"))
    code = main(
        [
            "backup",
            "restore",
            "--profile",
            "alice-restored",
            "--file",
            str(backup),
            "--passphrase-stdin",
            "--key",
            "-",
            "--server-config",
            str(chosen_path),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"relay: {relay.url}" in out

    written = ServerConfig.load(fresh / SERVER_CONFIG_NAME)
    assert written == chosen
    assert written.relay_ca_pem == relay.ca_file.read_text()
    assert written.sender_certificate_keys == (relay.sender_certificate_key,)
    assert (fresh / "relay-ca.pem").read_text() == relay.ca_file.read_text()
    _open_and_send(fresh, PassphraseProtector(PASSPHRASE), bob, "after the restore, CLI")


# ---- without a relay: which config wins, and what older backups give ------------------


def _config(url: str, keys: tuple[str, ...] = ()) -> ServerConfig:
    return ServerConfig(url, f"-----BEGIN CERTIFICATE-----\n{url}\n", sender_certificate_keys=keys)


def _key_backup(tmp_path: Path, profile_config: ServerConfig | None) -> tuple[bytes, Path]:
    profile = tmp_path / "source"
    store = Store.create(profile, protector())
    try:
        if profile_config is not None:
            profile_config.save(profile / SERVER_CONFIG_NAME)
        key = service.set_up_with_key(store, tmp_path / "backups")
        return key, service.back_up_now(store, profile).path
    finally:
        store.close()


def test_a_backup_records_the_profiles_server_config_in_the_store(tmp_path: Path) -> None:
    config = _config("https://relay.example:8443", ("ab" * 32,))
    profile = tmp_path / "p"
    store = Store.create(profile, protector())
    try:
        assert server_record.recorded(store) is None
        config.save(profile / SERVER_CONFIG_NAME)
        service.set_up_with_key(store, tmp_path / "backups")
        service.back_up_now(store, profile)
        assert server_record.recorded(store) == config
    finally:
        store.close()


def test_the_profiles_own_server_config_wins_over_the_recorded_one(tmp_path: Path) -> None:
    key, backup = _key_backup(tmp_path, _config("https://recorded.example"))
    own = _config("https://own.example", ("cd" * 32,))
    target = tmp_path / "target"
    own.save(target / SERVER_CONFIG_NAME)  # as `cipherline --server-config` leaves it
    report = engine.restore_backup(backup, key, target, protector())
    assert report.server_config == own
    assert ServerConfig.load(target / SERVER_CONFIG_NAME) == own
    assert (target / "relay-ca.pem").read_text() == own.relay_ca_pem


def test_a_chosen_server_config_wins_over_the_profiles_and_the_recorded_one(
    tmp_path: Path,
) -> None:
    key, backup = _key_backup(tmp_path, _config("https://recorded.example"))
    target = tmp_path / "target"
    _config("https://own.example").save(target / SERVER_CONFIG_NAME)
    chosen = _config("https://chosen.example", ("ef" * 32,))
    report = engine.restore_backup(backup, key, target, protector(), server_config=chosen)
    assert report.server_config == chosen
    assert ServerConfig.load(target / SERVER_CONFIG_NAME) == chosen


def test_an_older_backup_without_a_recorded_relay_writes_no_server_config(
    tmp_path: Path,
) -> None:
    profile = tmp_path / "source"
    store = Store.create(profile, protector())
    try:
        # A version 2 file, as an older Cipherline wrote it: nothing recorded.
        info = engine.write_backup(store, tmp_path / "backups", bytes(32), method=fmt.METHOD_KEY)
    finally:
        store.close()
    target = tmp_path / "target"
    report = engine.restore_backup(info.path, bytes(32), target, protector())
    assert report.server_config is None
    assert not (target / SERVER_CONFIG_NAME).exists()
    assert Store.exists(target)
