"""A restore is a new device or a takeover, never a silent clone (issue #19).

Before, a profile restored from a backup kept the original's device id and relay
token: both ran, both received, and whichever acknowledged first took each
envelope from the other. Real relay and clients: Alice backs up, restores on a
second computer, and chooses."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from app.backup import engine, service
from app.services.account import Profile, open_messenger, protector_for
from app.services.events import DeviceUnlinked, IdentityChanged
from app.services.messenger import ServiceError
from app.store import Store
from app.store.database import RESTORED_DEVICE_SETTING
from tests.services.helpers import Person, chat_id, make_profile, on_core, texts, wait_for
from tests.support.components import RelayProcess


def _restored_copy(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> tuple[Profile, engine.BackupInfo, bytes]:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "before the backup").result(20)
    wait_for(lambda: texts(bob, "alice") == ["before the backup"], what="bob receives")
    bob.client.accept_request(chat_id(bob, "alice")).result(20)
    bob.client.send_text(chat_id(bob, "alice"), "hello").result(20)
    wait_for(lambda: "hello" in texts(alice, "bob"), what="alice receives")
    store = alice.client.messenger.store
    folder = tmp_path / "Dropbox"
    key = on_core(alice, lambda: service.set_up_with_key(store, folder, schedule="off", keep=2))
    info = on_core(alice, lambda: service.back_up_now(store, alice.profile.path))
    target = make_profile(tmp_path, "alice-restored", relay)
    (target.path / "server.json").unlink()  # a fresh computer: the wizard writes it
    return target, info, key


def _restore(target: Profile, info: engine.BackupInfo, key: bytes, relay_profile: Profile) -> None:
    protector = protector_for(target.path, "restored passphrase")
    engine.restore_backup(
        info.path, key, target.path, protector, server_config=relay_profile.config
    )
    store = Store.open(target.path, protector)
    try:
        service.settle_after_restore(store)
    finally:
        store.close()


@pytest.mark.parametrize("take_over", [False, True], ids=["new-device", "take-over"])
def test_a_restored_computer_becomes_a_device_of_its_own(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess, take_over: bool
) -> None:
    alice, bob = people["alice"], people["bob"]
    target, info, key = _restored_copy(people, tmp_path, relay)
    _restore(target, info, key, alice.profile)
    profile = Profile.load(target.path)
    number_before = bob.client.safety_number("alice").result().digits

    messenger = open_messenger(profile, "restored passphrase", take_over=take_over)
    assert messenger.device_id != alice.client.messenger.device_id
    assert messenger.relay_token != alice.client.messenger.relay_token
    assert messenger.identity.public.to_bytes() != alice.client.messenger.identity.public.to_bytes()
    # The account identity came back from the backup: the same safety number.
    assert (
        messenger.account_identity.public.to_bytes()
        == alice.client.messenger.account_identity.public.to_bytes()
    )
    copy = Person(tmp_path, "alice", relay, linked=(profile, messenger))
    people["alice-restored"] = copy
    assert copy.client.safety_number("bob").result().digits == number_before
    assert "before the backup" in texts(copy, "bob")  # the history is back

    # The copy greets its contacts at its first start: its list reaches Bob.
    wait_for(
        lambda: (
            messenger.device_id
            in on_core(bob, lambda: bob.client.messenger.devices.devices("alice") or [])
        ),
        what="bob learns of the restored device",
    )
    bob.client.send_text(chat_id(bob, "alice"), "after the restore").result(20)
    wait_for(lambda: "after the restore" in texts(copy, "bob"), what="the copy receives")
    copy.client.send_text(chat_id(copy, "bob"), "from the restored one").result(20)
    wait_for(lambda: "from the restored one" in texts(bob, "alice"), what="bob receives")
    assert not any(isinstance(e, IdentityChanged) for e in bob.events)
    if take_over:
        wait_for(
            lambda: any(isinstance(e, DeviceUnlinked) for e in alice.events),
            what="the original is signed out and told",
        )
        time.sleep(1)
        assert "after the restore" not in texts(alice, "bob")
        listed = on_core(copy, copy.client.messenger.listed_devices)
        assert alice.client.messenger.device_id not in listed
    else:
        # Both are devices of the account, and each gets its own copy, once.
        wait_for(lambda: "after the restore" in texts(alice, "bob"), what="the original too")
        time.sleep(1)
        assert texts(alice, "bob").count("after the restore") == 1
        assert texts(copy, "bob").count("after the restore") == 1
        assert not any(isinstance(e, DeviceUnlinked) for e in alice.events)


def test_a_restored_computer_that_cannot_reach_the_relay_does_not_start_as_a_clone(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> None:
    alice = people["alice"]
    target, info, key = _restored_copy(people, tmp_path, relay)
    _restore(target, info, key, alice.profile)
    profile = Profile.load(target.path)
    unreachable = dataclasses.replace(profile.config, relay_url="https://127.0.0.1:9")
    with pytest.raises(ServiceError, match="Cannot reach the relay"):
        open_messenger(Profile(profile.path, unreachable), "restored passphrase")
    store = Store.open(target.path, protector_for(target.path, "restored passphrase"))
    try:
        assert store.settings.get(RESTORED_DEVICE_SETTING) == "add"  # tried again next time
        account = store.account.get()
        assert account is not None
        assert account.device_id == alice.client.messenger.device_id  # unchanged
    finally:
        store.close()
