"""The relay stores device names sealed (app/protocol/device_names.py): its files
hold no name, and the account's devices list their names from the ciphertext."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from app.protocol.device_names import PREFIX, STORED_LENGTH, open_device_name, seal_device_name
from app.protocol.identity import DeviceIdentity
from app.services.account import create_account
from app.services.client import Client
from tests.services.helpers import FAST_KDF, make_profile, wait_for
from tests.support.components import RelayProcess

NAME = "Kitchen laptop ☕"
OTHER_NAME = "Phone in the hall"


def test_the_relay_holds_no_device_name_and_the_devices_list_them(
    tmp_path: Path, relay: RelayProcess
) -> None:
    profile = make_profile(tmp_path, "alice", relay)
    messenger = create_account(profile, "alice", NAME, "alice passphrase", kdf=FAST_KDF)
    client = Client(messenger, profile.relay(timeout=3), tick_seconds=0.2)
    client.start()
    try:
        # A second device under an identity of its own, as a reinstall adds one.
        other = DeviceIdentity.generate()
        owner = profile.relay(token=messenger.relay_token)
        added = owner.add_device(seal_device_name(other, OTHER_NAME))
        owner.close()
        listed = client.devices().result(20)
    finally:
        client.stop()
    assert [(d["device_id"], d["name"], d["current"]) for d in listed] == [
        (1, NAME, True),
        (2, None, False),
    ]
    second = profile.relay(token=str(added["token"]))
    seen = {d["device_id"]: open_device_name(other, d["name"]) for d in second.devices()}
    second.close()
    assert seen == {1: None, 2: OTHER_NAME}

    database = sqlite3.connect(relay.data_dir / "relay.sqlite3")
    stored = [row[0] for row in database.execute("SELECT name FROM devices")]
    database.close()
    assert len(stored) == 2
    assert all(name.startswith(PREFIX) and len(name) == STORED_LENGTH for name in stored)
    files = [relay.data_dir / name for name in ("relay.sqlite3", "relay.sqlite3-wal", "relay.log")]
    for path in files:
        if path.exists():
            data = path.read_bytes()
            for name in (NAME, OTHER_NAME, "Kitchen", "hall"):
                assert name.encode() not in data, (path.name, name)


def test_a_name_an_older_client_stored_in_the_clear_is_sealed_at_the_next_start(
    tmp_path: Path, relay: RelayProcess
) -> None:
    profile = make_profile(tmp_path, "bob", relay)
    messenger = create_account(profile, "bob", NAME, "bob passphrase", kdf=FAST_KDF)
    # What an older client left: the name in the clear (its own route, as it had).
    owner = profile.relay(token=messenger.relay_token)
    owner.rename_own_device("Bob's old laptop")
    assert [d["name"] for d in owner.devices()] == ["Bob's old laptop"]
    # The route renames the caller's own device, never another account's.
    mallory = create_account(
        make_profile(tmp_path, "mallory", relay), "mallory", "m", "m passphrase", kdf=FAST_KDF
    )
    mallory.store.close()
    stranger = profile.relay(token=mallory.relay_token)
    stranger.rename_own_device("renamed by mallory")
    stranger.close()
    assert [d["name"] for d in owner.devices()] == ["Bob's old laptop"]
    client = Client(messenger, profile.relay(timeout=3), tick_seconds=0.2)
    client.start()
    try:
        wait_for(
            lambda: all(d["name"].startswith(PREFIX) for d in owner.devices()),
            what="the sealed name",
        )
        listed = client.devices().result(20)
    finally:
        client.stop()
        owner.close()
    assert [d["name"] for d in listed] == ["Bob's old laptop"]
    database = sqlite3.connect(relay.data_dir / "relay.sqlite3")
    stored = [
        row[0]
        for row in database.execute(
            "SELECT d.name FROM devices d JOIN accounts a ON a.id = d.account_id"
            " WHERE a.username = 'bob'"
        )
    ]
    database.close()
    assert len(stored) == 1 and stored[0].startswith(PREFIX)

    # Nor, once the relay's scrub has run (every 5 s), in its write-ahead log.
    def gone() -> bool:
        return not any(
            path.exists() and b"old laptop" in path.read_bytes()
            for path in (relay.data_dir / "relay.sqlite3", relay.data_dir / "relay.sqlite3-wal")
        )

    wait_for(gone, timeout=15, what="the old name gone from the relay's files")
