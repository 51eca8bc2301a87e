"""A restore never reuses a key (issue #18, item 4; docs/protocol.md, "Restore").

A backup carries ratchet sessions and sender keys. Had a restored profile resumed
them, its next message would be sealed under a message key — so an AES-GCM key and
nonce — that the device the backup came from already used after the backup. Here
the AEAD is watched at the `app.crypto` boundary: the seal recipe the Double
Ratchet and Sender Keys call is wrapped, in the test only, to record the (key,
nonce) of every message encryption of everyone in the scenario, and no pair may
come twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.backup import engine, service
from app.backup import format as fmt
from app.crypto import AeadKey
from app.protocol import ProtocolError, ratchet, sender_keys
from app.protocol.content import RestoreNotice, decode_content, encode_content
from app.protocol.sender_keys import SenderKeyState
from app.protocol.session import Session
from app.services.account import protector_for
from app.services.client import Client
from app.services.messenger import Messenger
from app.services.views import MessageStatus, MessageView
from app.store import Store
from tests.protocol.helpers import start_pair
from tests.services.helpers import FAST_KDF, Person, make_profile, wait_for
from tests.store.conftest import protector
from tests.support.components import RelayProcess

KEY = bytes(range(32))
NOTICE = "alice restored Cipherline on a new device; messages continue in a new session"


class SealRecorder:
    """Wraps `aead_seal` where the ratchet and Sender Keys call it; keeps every
    (key, nonce) it was given, from every thread."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pairs: list[tuple[bytes, bytes]] = []
        self._lock = threading.Lock()
        for module in (ratchet, sender_keys):
            monkeypatch.setattr(module, "aead_seal", self._wrap(module.aead_seal))

    def _wrap(self, original: object) -> object:
        def seal(key: AeadKey | bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
            raw = key.raw if isinstance(key, AeadKey) else bytes(key)
            with self._lock:
                self.pairs.append((raw, bytes(nonce)))
            return original(key, nonce, plaintext, ad)  # type: ignore[operator,no-any-return]

        return seal

    def repeats(self) -> list[tuple[bytes, bytes]]:
        seen: set[tuple[bytes, bytes]] = set()
        repeated = []
        for pair in self.pairs:
            if pair in seen:
                repeated.append(pair)
            seen.add(pair)
        return repeated


@pytest.fixture
def seals(monkeypatch: pytest.MonkeyPatch) -> SealRecorder:
    return SealRecorder(monkeypatch)


# ---- the store: what a restore leaves ---------------------------------------------


def test_after_a_restore_no_session_can_encrypt_and_archived_ones_still_decrypt(
    tmp_path: Path, seals: SealRecorder
) -> None:
    _alice, _bob, alice_session, bob_session = start_pair()
    group_id = b"friends-group-id"
    own_chain = SenderKeyState.create(group_id)
    bob_chain = SenderKeyState.create(group_id)
    store = Store.create(tmp_path / "alice", protector())
    with store.transaction():
        store.sessions.save("bob", 7, alice_session.to_bytes(), now=1)
        conversation = store.conversations.create_group(group_id, "Friends", now=1)
        store.groups.create(group_id, conversation.id, "Friends")
        store.groups.set_members(group_id, ["alice", "bob"])
        store.groups.set_own_sender_key(group_id, own_chain.to_bytes(), 0)
        store.groups.set_member_sender_key(
            group_id,
            "bob",
            1,
            SenderKeyState.from_distribution(bob_chain.distribution()).to_bytes(),
        )
    info = engine.write_backup(store, tmp_path / "backups", KEY, method=fmt.METHOD_KEY)
    backed_up = alice_session.to_bytes()

    # The device the backup came from goes on sending, pairwise and in the group.
    alice_session.encrypt(b"after the backup")
    own_chain.encrypt(b"group, after the backup")
    # Resuming the backup's state would repeat exactly those pairs: the threat.
    resumed = len(seals.pairs)
    Session.from_bytes(backed_up).encrypt(b"what a resumed session would send")
    assert seals.pairs[-1] == seals.pairs[resumed - 2]
    del seals.pairs[resumed:]

    # Bob writes to the old device: once in his current chain, once after a DH step.
    late_same_chain = bob_session.encrypt(b"late, same chain")
    bob_session.decrypt(alice_session.encrypt(b"after the backup, second"))
    late_new_chain = bob_session.encrypt(b"late, after a DH step")
    store.close()

    report = engine.restore_backup(info.path, KEY, tmp_path / "restored", protector())
    assert report.sessions_archived == 1
    assert report.counts["sessions"] == 1  # what the backup held
    restored = Store.open(tmp_path / "restored", protector())
    try:
        assert restored.sessions.all() == []
        assert restored.sessions.devices("bob") == []
        assert restored.sessions.get("bob", 7) is None
        assert restored.sessions.restore_notice_due("bob")
        archived = restored.sessions.archived("bob", 7)
        assert len(archived) == 1
        for _user, _device, state in restored.sessions.all_archived():
            session = Session.from_bytes(state)
            assert not session.can_encrypt and session.pending_prekey is None
            with pytest.raises(ProtocolError):
                session.encrypt(b"never")
        group = restored.groups.get(group_id)
        assert group is not None and group.own_sender_key is None
        assert restored.groups.member_sender_key(group_id, "bob", 1) is not None

        # Archived: still opens late messages of the old session, in order or not.
        session = Session.from_bytes(archived[0][1])
        assert session.decrypt(late_new_chain) == b"late, after a DH step"
        assert session.can_encrypt  # the DH step grew a sending chain …
        session = session.archived()  # … which archiving again removes
        assert not session.can_encrypt
        assert session.decrypt(late_same_chain) == b"late, same chain"
        with pytest.raises(ProtocolError):
            session.archived().encrypt(b"never")
    finally:
        restored.close()
    assert seals.repeats() == []


def test_the_restore_notice_round_trips_under_content_version_1() -> None:
    notice = RestoreNotice("n-1", 1_700_000_000_000)
    encoded = encode_content(notice)
    assert encoded[:2] == bytes([1, 7])
    assert decode_content(encoded) == notice


# ---- people: talk, back up, talk, restore, talk ------------------------------------


class RestoredPerson:
    """Alice again, from her backup, in a new profile: same account and device."""

    def __init__(self, root: Path, name: str, relay: RelayProcess, backup: Path, key: bytes):
        self.name = name
        self.profile = make_profile(root, f"{name}-restored", relay)
        guard = protector_for(self.profile.path, f"{name} passphrase", FAST_KDF)
        self.report = engine.restore_backup(backup, key, self.profile.path, guard)
        store = Store.open(self.profile.path, guard)
        service.store_key_after_restore(store, key)
        self.client = Client(
            Messenger(store, self.profile.path), self.profile.relay(timeout=3), tick_seconds=0.2
        )

    def start(self) -> None:
        """Starts receiving (and flushing the outbox)."""
        self.client.start()

    def stop(self) -> None:
        self.client.stop()


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    created = {name: Person(tmp_path, name, relay) for name in ("alice", "bob", "carol")}
    yield created
    for someone in created.values():
        if not someone.client._stop.is_set():
            someone.stop()


def _conversation(person: Person | RestoredPerson, title: str) -> int | None:
    for conversation in person.client.conversations().result():
        if conversation.title == title:
            return conversation.conversation_id
    return None


def _rows(person: Person | RestoredPerson, title: str) -> list[MessageView]:
    conversation_id = _conversation(person, title)
    if conversation_id is None:
        return []
    _view, messages = person.client.open_conversation(conversation_id).result()
    return messages


def _texts(person: Person | RestoredPerson, title: str) -> list[str]:
    return [m.body for m in _rows(person, title) if not m.system]


def _system(person: Person | RestoredPerson, title: str) -> list[str]:
    return [m.body for m in _rows(person, title) if m.system]


def _delivered(person: Person | RestoredPerson, title: str, body: str) -> bool:
    return any(
        m.body == body and m.outgoing and m.status in (MessageStatus.DELIVERED, MessageStatus.READ)
        for m in _rows(person, title)
    )


def _wait_delivered(person: Person | RestoredPerson, title: str, body: str) -> None:
    wait_for(lambda: _delivered(person, title, body), what=f"{body!r} delivered")


def _send(person: Person | RestoredPerson, title: str, body: str) -> None:
    conversation_id = _conversation(person, title)
    assert conversation_id is not None
    person.client.send_text(conversation_id, body).result(20)


def _arrives(person: Person | RestoredPerson, title: str, body: str) -> None:
    wait_for(lambda: body in _texts(person, title), what=f"{person.name} reads {body!r}")


def test_a_restored_profile_starts_fresh_sessions_and_never_repeats_a_key_and_nonce(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess, seals: SealRecorder
) -> None:
    alice, bob, carol = people["alice"], people["bob"], people["carol"]

    # Before the backup: Alice and Bob talk; Alice, Bob and Carol share a group.
    alice.client.start_direct("bob").result(20)
    _send(alice, "bob", "before the backup")
    _arrives(bob, "alice", "before the backup")
    _send(bob, "alice", "bob, before the backup")
    _arrives(alice, "bob", "bob, before the backup")
    alice.client.create_group("Friends", ["bob", "carol"]).result(20)
    wait_for(lambda: _conversation(bob, "Friends") and _conversation(carol, "Friends"))
    _send(alice, "Friends", "group, before the backup")
    _arrives(bob, "Friends", "group, before the backup")
    _arrives(carol, "Friends", "group, before the backup")
    _send(bob, "Friends", "bob in the group, before the backup")
    _arrives(alice, "Friends", "bob in the group, before the backup")
    _wait_delivered(alice, "bob", "before the backup")
    _wait_delivered(alice, "Friends", "group, before the backup")

    # The backup: a real file, written by the backup service from Alice's store.
    store = alice.client.messenger.store
    folder = tmp_path / "Dropbox" / "Cipherline"
    key = alice.client.core(service.set_up_with_key, store, folder).result()
    backup = alice.client.core(service.back_up_now, store, alice.profile.path).result().path

    # After it, Alice's device goes on, pairwise and in the group.
    _send(alice, "bob", "after the backup")
    _send(alice, "Friends", "group, after the backup")
    _arrives(bob, "alice", "after the backup")
    _arrives(bob, "Friends", "group, after the backup")
    _arrives(carol, "Friends", "group, after the backup")
    _wait_delivered(alice, "bob", "after the backup")
    alice.stop()
    # Bob writes to the old session while Alice is away.
    _send(bob, "alice", "late, to the old session")
    before_restore = len(seals.pairs)

    # Alice restores the backup into a new profile.
    restored = RestoredPerson(tmp_path, "alice", relay, backup, key)
    try:
        assert restored.report.sessions_archived == 2  # Bob's device and Carol's
        # Alice writes again, first thing, before she hears from anyone: Bob gets a
        # fresh session, opening with the notice. (Resumed, the backup's session would
        # seal this under the key and nonce of "after the backup".)
        _send(restored, "bob", "after the restore")
        restored.start()
        # An archived session still opens the late message (and sends nothing back).
        _arrives(restored, "bob", "late, to the old session")
        assert "after the backup" not in _texts(restored, "bob")  # not in the backup
        _arrives(bob, "alice", "after the restore")
        wait_for(lambda: NOTICE in _system(bob, "alice"), what="bob sees the notice")
        _send(restored, "Friends", "group, after the restore")
        _arrives(bob, "Friends", "group, after the restore")
        _arrives(carol, "Friends", "group, after the restore")
        wait_for(lambda: NOTICE in _system(carol, "alice"), what="carol sees the notice")
        assert _system(bob, "alice").count(NOTICE) == 1

        # Replies reach the restored Alice: pairwise on the new session, and in the
        # group under Bob's own chain (hers for it came in the backup and was kept).
        _send(bob, "alice", "bob, after the restore")
        _arrives(restored, "bob", "bob, after the restore")
        _send(bob, "Friends", "bob in the group, after the restore")
        _arrives(restored, "Friends", "bob in the group, after the restore")
        _wait_delivered(restored, "bob", "after the restore")

        messenger = restored.client.messenger

        def archived_states() -> list[Session]:
            rows = messenger.store.sessions.all_archived()
            return [Session.from_bytes(state) for _user, _device, state in rows]

        archived = restored.client.core(archived_states).result()
        assert len(archived) == 2 and not any(s.can_encrypt for s in archived)
    finally:
        restored.stop()

    assert len(seals.pairs) > before_restore + 5  # the restored device did encrypt
    assert seals.repeats() == [], "a (key, nonce) pair was used twice"
