from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from app.config import SERVER_CONFIG_NAME, ServerConfig
from app.crypto import Argon2Params
from app.services.account import (
    Profile,
    create_account,
    create_linked_account,
    open_messenger,
    protector_for,
)
from app.services.client import Client
from app.services.events import Event
from app.services.messenger import Messenger
from app.store import Account, Store
from tests.support.components import RelayProcess

FAST_KDF = Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)

T = TypeVar("T")


def make_profile(root: Path, name: str, relay: RelayProcess, *, sealed: bool = False) -> Profile:
    """A profile for `relay`; `sealed` pins the relay's sender-certificate key, so
    the client sends and accepts sealed mail (app/protocol/sealed.py)."""
    path = root / "profiles" / name
    path.mkdir(parents=True, exist_ok=True)
    keys = (relay.sender_certificate_key,) if sealed else ()
    config = ServerConfig(relay.url, relay.ca_file.read_text(), sender_certificate_keys=keys)
    config.save(path / SERVER_CONFIG_NAME)
    return Profile.load(path)


class Person:
    def __init__(
        self,
        root: Path,
        name: str,
        relay: RelayProcess,
        *,
        reinstalling: Person | None = None,
        adding_to: Person | None = None,
        sealed: bool = False,
        linked: tuple[Profile, Messenger] | None = None,
    ) -> None:
        self.name = name
        if linked is not None:
            self.profile, messenger = linked
        elif adding_to is not None:
            self.profile = make_profile(root, f"{name}-device-2", relay, sealed=sealed)
            messenger = _link_device(self.profile, adding_to)
        elif reinstalling is None:
            self.profile = make_profile(root, name, relay, sealed=sealed)
            messenger = create_account(
                self.profile, name, "laptop", f"{name} passphrase", kdf=FAST_KDF
            )
        else:
            self.profile = make_profile(root, f"{name}-reinstalled", relay)
            messenger = _reinstalled_device(self.profile, reinstalling)
        self.client = Client(messenger, self.profile.relay(timeout=3), tick_seconds=0.2)
        self.events: list[Event] = []
        self.client.set_listener(self.events.append)
        self.client.start()
        if reinstalling is not None:
            # As a reinstalled app's first start: its new list is published before
            # anyone fetches its keys.
            assert self.client.device_list_published is not None
            assert self.client.device_list_published.result(timeout=20)

    def stop(self) -> None:
        self.client.stop()

    def restart(self) -> None:
        """Opens the same profile again after `stop`, as the app's next start."""
        messenger = open_messenger(self.profile, f"{self.name} passphrase")
        self.client = Client(messenger, self.profile.relay(timeout=3), tick_seconds=0.2)
        self.client.set_listener(self.events.append)
        self.client.start()

    def reinstall(self, root: Path, relay: RelayProcess) -> Person:
        """The same username on a fresh profile with a new identity key, as after a
        reinstall: this device is stopped, a new one is added to the account with its
        token and publishes new keys, and this one is removed from the relay."""
        return Person(root, self.name, relay, reinstalling=self)

    def add_device(self, root: Path, relay: RelayProcess, *, sealed: bool = False) -> Person:
        """A second device linked to this account (as the link dialogs do, without
        the mailbox: tests/services/test_linking.py runs that), running beside
        this one: a device identity of its own, named in the account's list."""
        return Person(root, self.name, relay, adding_to=self, sealed=sealed)


def _link_device(profile: Profile, existing: Person) -> Messenger:
    identity, prekeys = Messenger.prepare_account()
    linked = existing.client.approve_link("phone", identity.public).result(timeout=30)
    return create_linked_account(
        profile, linked, identity, prekeys, f"{existing.name} passphrase", kdf=FAST_KDF
    )


def _reinstalled_device(profile: Profile, old: Person) -> Messenger:
    """A device added to `old`'s account under a new identity; `old` is stopped and
    removed from the relay, as after a reinstall."""
    old_device = old.client.messenger.device_id
    old_relay = old.profile.relay(token=old.client.messenger.relay_token)
    old.stop()
    added = old_relay.add_device("reinstalled")
    identity, prekeys = Messenger.prepare_account()
    passphrase = f"{old.name} passphrase"
    store = Store.create(profile.path, protector_for(profile.path, passphrase, FAST_KDF))
    relay = profile.relay(token=str(added["token"]))
    relay.upload_keys(prekeys.upload_json(identity))
    relay.close()
    prekeys.mark_published()
    with store.transaction():
        store.account.save(
            Account(
                username=old.name,
                device_id=int(added["device_id"]),
                device_name="reinstalled",
                relay_token=str(added["token"]),
                identity=identity.to_bytes(),
                prekeys=prekeys.to_bytes(),
            ),
            now=int(time.time() * 1000),
        )
    old_relay.remove_device(old_device)
    old_relay.close()
    return Messenger(store, profile.path)


def chat_id(person: Person, title: str) -> int:
    """The id of the person's chat called `title` (a peer's name or a group's)."""
    conversations = person.client.conversations().result(20)
    return next(c.conversation_id for c in conversations if c.title == title)


def has_chat(person: Person, title: str) -> bool:
    return any(c.title == title for c in person.client.conversations().result(20))


def texts(
    person: Person, title: str, *, system: bool = False, outgoing: bool | None = None
) -> list[str]:
    """The bodies shown in the person's chat `title`, oldest first: its messages
    (or, with `system`, its system rows), only the person's own with `outgoing`."""
    conversations = person.client.conversations().result(20)
    match = [c for c in conversations if c.title == title]
    if not match:
        return []
    _view, messages = person.client.open_conversation(match[0].conversation_id).result(20)
    return [
        m.body
        for m in messages
        if m.system == system and (outgoing is None or m.outgoing == outgoing)
    ]


OLD_MESSAGE = (
    "INSERT INTO messages (conversation_id, uuid, sender, outgoing, kind, body, sent_at,"
    " received_at, status) VALUES (?, ?, ?, ?, 'text', ?, ?, ?, ?)"
)


def write_old_history(person: Person, chats: list[tuple[str, str]], count: int) -> None:
    """`count` old messages written straight into the person's store on its core
    thread, in turn over `chats` (title, the peer who writes there), every other
    one the person's own. A chat titled as a peer that does not exist yet is made
    (direct). Ids are "history-000000" on, dated years back."""
    store = person.client.messenger.store

    def run() -> None:
        ids = []
        for title, peer in chats:
            existing = [c for c in store.conversations.all() if c.title == title]
            ids.append(existing[0].id if existing else store.conversations.direct(peer, now=1).id)
        rows = []
        for number in range(count):
            index = number % len(chats)
            outgoing = number % 2 == 0
            rows.append(
                (
                    ids[index],
                    f"history-{number:06d}",
                    person.name if outgoing else chats[index][1],
                    int(outgoing),
                    f"old message {number} about the harbour",
                    1_600_000_000_000 + number * 60_000,
                    1_600_000_000_500 + number * 60_000,
                    "delivered" if outgoing else "read",
                )
            )
        with store.transaction():
            store.executemany(OLD_MESSAGE, rows)

    on_core(person, run)


def wait_for(condition: Callable[[], object], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def on_core(person: Person, function: Callable[[], T]) -> T:
    """Runs `function` on the person's core thread (where the store may be read)."""
    return person.client.core(function).result(timeout=20)


def drain_one_time_keys(thief: Person, victim: str) -> None:
    """Fetches the victim's bundle until the relay hands out no one-time keys. The
    relay hands one account only a few an hour, so the thief signs up a fresh
    account for each fetch; then the victim's stock, or its hourly allowance for
    everyone, runs out, and the next contact's bundle has none either."""
    for _ in range(500):
        sybil = thief.profile.relay()
        try:
            sybil.register(f"sybil-{uuid.uuid4().hex[:12]}", "drainer")
            device = sybil.fetch_keys(victim)["devices"][0]
        finally:
            sybil.close()
        if device["one_time_prekey"] is None and device["one_time_kem_prekey"] is None:
            return
    raise AssertionError("the one-time keys did not run out")
