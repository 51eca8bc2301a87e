"""Session start (PQXDH) and the Double Ratchet, on their own."""

from __future__ import annotations

import base64

import pytest

from app.protocol import (
    AuthenticationError,
    BundleError,
    MalformedMessage,
    PrekeyReplay,
    ReplayError,
)
from app.protocol.identity import DeviceIdentity, LocalPrekeys, PublicIdentity, RemoteBundle
from app.protocol.ratchet import MAX_SKIP
from app.protocol.session import Session, is_prekey_message
from tests.protocol.helpers import Device, start_pair


def test_session_start_consumes_one_time_prekeys_and_converges() -> None:
    alice, bob = Device.create(), Device.create()
    bundle = bob.bundle()
    assert bundle.one_time_prekey_id is not None
    assert not bundle.kem_is_last_resort
    session = Session.initiate(alice.identity, bundle)
    first = session.encrypt(b"one")
    second = session.encrypt(b"two")
    assert is_prekey_message(first)
    assert is_prekey_message(second)
    bob_session, plaintext, remote = Session.respond(bob.identity, bob.prekeys, first)
    assert plaintext == b"one"
    assert remote == alice.identity.public
    assert bundle.one_time_prekey_id not in bob.prekeys.one_time
    assert bundle.kem_prekey_id not in bob.prekeys.one_time_kem
    assert bob_session.decrypt(second) == b"two"
    reply = bob_session.encrypt(b"three")
    assert not is_prekey_message(reply)
    assert session.decrypt(reply) == b"three"
    assert not is_prekey_message(session.encrypt(b"four"))


def test_last_resort_keys_work_when_one_time_keys_run_out() -> None:
    alice, bob = Device.create(), Device.create(batch=0)
    bundle = bob.bundle()
    assert bundle.one_time_prekey_id is None
    assert bundle.kem_is_last_resort
    session = Session.initiate(alice.identity, bundle)
    bob_session, plaintext, _ = Session.respond(bob.identity, bob.prekeys, session.encrypt(b"x"))
    assert plaintext == b"x"
    assert session.decrypt(bob_session.encrypt(b"y")) == b"y"


def test_one_time_prekey_cannot_be_used_twice() -> None:
    alice, bob = Device.create(), Device.create()
    bundle = bob.bundle()
    first = Session.initiate(alice.identity, bundle).encrypt(b"a")
    Session.respond(bob.identity, bob.prekeys, first)
    # A replay of a start that used one-time keys: refused as a replay, not a forgery.
    with pytest.raises(PrekeyReplay, match=r"already used"):
        Session.respond(bob.identity, bob.prekeys, first)


def test_forged_bundle_signatures_are_refused() -> None:
    bob, mallory = Device.create(), Device.create()
    entry = bob.fetched_entry()
    forged = dict(entry, signed_prekey=mallory.fetched_entry()["signed_prekey"])
    with pytest.raises(BundleError):
        RemoteBundle.from_fetched_device(forged)
    kem_forged = dict(entry, one_time_kem_prekey=mallory.fetched_entry()["one_time_kem_prekey"])
    with pytest.raises(BundleError):
        RemoteBundle.from_fetched_device(kem_forged)
    for broken in (
        {},
        dict(entry, identity="!!"),
        dict(entry, identity=base64.b64encode(b"\x01" + bytes(10)).decode()),
        dict(entry, device_id="one"),
    ):
        with pytest.raises(BundleError):
            RemoteBundle.from_fetched_device(broken)


def test_identity_binding_cannot_be_recombined() -> None:
    honest, other = DeviceIdentity.generate(), DeviceIdentity.generate()
    spliced = PublicIdentity(
        honest.public.verify_key, other.public.dh_key, honest.public.binding_signature
    )
    with pytest.raises(BundleError):
        PublicIdentity.from_bytes(spliced.to_bytes())


def test_out_of_order_within_the_window() -> None:
    _alice, _bob, alice_session, bob_session = start_pair()
    envelopes = [alice_session.encrypt(f"m{i}".encode()) for i in range(20)]
    order = [5, 0, 19, 3, 1, 2, 4, *range(6, 19)]
    assert [bob_session.decrypt(envelopes[i]) for i in order] == [f"m{i}".encode() for i in order]


def test_replay_is_refused_and_state_survives() -> None:
    _alice, _bob, alice_session, bob_session = start_pair()
    envelope = alice_session.encrypt(b"once")
    assert bob_session.decrypt(envelope) == b"once"
    with pytest.raises(ReplayError):
        bob_session.decrypt(envelope)
    assert bob_session.decrypt(alice_session.encrypt(b"next")) == b"next"


def test_every_altered_byte_is_rejected_without_changing_state() -> None:
    _alice, _bob, alice_session, bob_session = start_pair()
    envelope = alice_session.encrypt(b"integrity matters")
    before = bob_session.to_bytes()
    for position in range(len(envelope)):
        altered = bytearray(envelope)
        altered[position] ^= 0x01
        with pytest.raises((AuthenticationError, MalformedMessage, ReplayError)):
            bob_session.decrypt(bytes(altered))
        assert bob_session.to_bytes() == before
    assert bob_session.decrypt(envelope) == b"integrity matters"


def test_too_many_skipped_messages_are_refused() -> None:
    _alice, _bob, alice_session, bob_session = start_pair()
    for _ in range(MAX_SKIP + 1):
        alice_session.encrypt(b"lost")
    with pytest.raises(AuthenticationError, match="skipped"):
        bob_session.decrypt(alice_session.encrypt(b"too far"))


def test_state_round_trips_exactly() -> None:
    _alice, _bob, alice_session, bob_session = start_pair()
    for i in range(5):
        alice_session.encrypt(f"skipped {i}".encode())
    envelope = alice_session.encrypt(b"after a gap")
    bob_session.decrypt(envelope)
    for session in (alice_session, bob_session):
        data = session.to_bytes()
        assert Session.from_bytes(data).to_bytes() == data
    restored = Session.from_bytes(bob_session.to_bytes())
    assert restored.decrypt(alice_session.encrypt(b"later")) == b"later"


def test_local_prekeys_round_trip_and_refill() -> None:
    prekeys = LocalPrekeys.generate(batch=4)
    assert len(prekeys.one_time) == 4
    data = prekeys.to_bytes()
    assert LocalPrekeys.from_bytes(data).to_bytes() == data
    identity = DeviceIdentity.generate()
    upload = prekeys.upload_json(identity)
    assert {"identity", "signed_prekey", "last_resort_kem_prekey"} <= set(upload)
    prekeys.mark_published()
    prekeys.refill(batch=2)
    refill = prekeys.upload_json(identity, full=False)
    assert len(refill["one_time_prekeys"]) == 2
    assert "identity" not in refill
    assert DeviceIdentity.from_bytes(identity.to_bytes()).public == identity.public


def test_private_keys_hide_from_repr() -> None:
    identity = DeviceIdentity.generate()
    assert identity.signing_key.to_bytes().hex() not in repr(identity)
    prekeys = LocalPrekeys.generate(batch=1)
    assert prekeys.signed_prekey.to_bytes().hex() not in repr(prekeys)
