"""Prekey lifetimes (docs/protocol.md §1): the signed prekey and the last-resort KEM
prekey are rotated on a schedule, the replaced ones are kept through a grace period
and then deleted, and a session start that names a deleted one is refused.

The clock is a number handed in; nothing here sleeps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.crypto import DeterministicRng
from app.protocol import AuthenticationError, ExpiredPrekey, PrekeyReplay
from app.protocol.identity import (
    DAY_MS,
    GRACE_PERIOD_MS,
    LAST_RESORT_ID_BASE,
    ROTATION_PERIOD_MS,
    SIGNED_PREKEY_ID_BASE,
    DeviceIdentity,
    LocalPrekeys,
)
from app.protocol.session import PREKEY_MESSAGE, Envelope, PrekeyInfo, Session, SessionStart
from tests.protocol.helpers import Device

T0 = 1_800_000_000_000  # ms


def _bob(now: int = T0, batch: int = 0) -> Device:
    """Bob, published at `now`, with `batch` one-time keys of each kind."""
    device = Device(DeviceIdentity.generate(), LocalPrekeys.generate(batch=batch, now=now))
    device.prekeys.mark_published()
    return device


def _rotate_and_publish(device: Device, now: int) -> None:
    """What a prekey check does when rotation is due and the upload succeeds."""
    assert device.prekeys.rotate_if_due(now)
    upload = device.prekeys.pending_upload(device.identity)
    assert upload is not None and upload.signed_prekey_id == device.prekeys.signed_prekey_id
    device.prekeys.mark_uploaded(upload, now)


def _private_bytes(prekeys: LocalPrekeys, signed_prekey_id: int) -> tuple[bytes, bytes]:
    generation = next(g for g in prekeys.generations if g.signed_prekey_id == signed_prekey_id)
    return generation.signed_prekey.to_bytes(), generation.last_resort_kem.to_bytes()


def _respond(device: Device, message: bytes, used: set[bytes] | None = None) -> bytes:
    used = set() if used is None else used
    _session, plaintext, _remote = Session.respond(
        device.identity, device.prekeys, message, used_starts=used
    )
    start = SessionStart.of_envelope(message)
    assert start is not None
    if start.needs_memory(device.prekeys):
        used.add(start.digest)
    return plaintext


# ---- the schedule ----------------------------------------------------------------
def test_rotation_follows_the_schedule_with_new_ids_that_only_increase() -> None:
    bob = _bob()
    prekeys = bob.prekeys
    assert prekeys.signed_prekey_id == SIGNED_PREKEY_ID_BASE + 1
    assert prekeys.last_resort_id == LAST_RESORT_ID_BASE + 1
    assert not prekeys.rotation_due(T0 + ROTATION_PERIOD_MS - 1)
    assert not prekeys.rotate_if_due(T0 + ROTATION_PERIOD_MS - 1)

    seen_signed, seen_last_resort = [prekeys.signed_prekey_id], [prekeys.last_resort_id]
    now = T0
    for _week in range(5):
        now += ROTATION_PERIOD_MS
        _rotate_and_publish(bob, now)
        seen_signed.append(prekeys.signed_prekey_id)
        seen_last_resort.append(prekeys.last_resort_id)
        # Checked again at once (a second check, a restart): nothing more happens.
        assert not prekeys.rotate_if_due(now)
        assert not prekeys.rotate_if_due(now + ROTATION_PERIOD_MS - 1)
    assert seen_signed == sorted(set(seen_signed))
    assert seen_last_resort == sorted(set(seen_last_resort))
    # No id of one kind is ever an id of another, nor a one-time id.
    one_time = set(prekeys.one_time) | set(prekeys.one_time_kem)
    assert not (set(seen_signed) & set(seen_last_resort)) and not (one_time & set(seen_signed))
    # Every id it made is known as its own, held or deleted.
    assert all(prekeys.had_signed_prekey(i) for i in seen_signed)
    assert all(prekeys.had_last_resort(i) for i in seen_last_resort)
    assert not prekeys.had_signed_prekey(seen_signed[-1] + 1)


def test_an_unpublished_signed_prekey_is_not_rotated_again_until_it_is_uploaded() -> None:
    bob = _bob()
    first = bob.prekeys.signed_prekey_id
    assert bob.prekeys.rotate_if_due(T0 + ROTATION_PERIOD_MS)
    # The upload failed: later checks retry it instead of rotating past it.
    late = T0 + 10 * ROTATION_PERIOD_MS
    assert not bob.prekeys.rotate_if_due(late)
    assert bob.prekeys.expire(late) == []
    assert first in bob.prekeys.held_signed_prekey_ids()
    upload = bob.prekeys.pending_upload(bob.identity)
    assert upload is not None and "signed_prekey" in upload.body
    bob.prekeys.mark_uploaded(upload, late)
    assert bob.prekeys.pending_upload(bob.identity) is None
    # Its rotation period starts when it was published, not when it was made.
    assert not bob.prekeys.rotation_due(late + ROTATION_PERIOD_MS - 1)
    assert bob.prekeys.rotation_due(late + ROTATION_PERIOD_MS)
    # The grace period of the old key starts when the new one was published.
    assert bob.prekeys.expire(late + GRACE_PERIOD_MS - 1) == []
    assert bob.prekeys.expire(late + GRACE_PERIOD_MS) != []


def test_an_old_key_is_kept_through_the_grace_period_then_its_private_bytes_are_gone() -> None:
    bob = _bob(batch=2)
    old_id, old_last_resort = bob.prekeys.signed_prekey_id, bob.prekeys.last_resort_id
    old_private = _private_bytes(bob.prekeys, old_id)
    rotated_at = T0 + ROTATION_PERIOD_MS
    _rotate_and_publish(bob, rotated_at)

    assert bob.prekeys.expire(rotated_at + GRACE_PERIOD_MS - 1) == []
    assert old_id in bob.prekeys.held_signed_prekey_ids()
    stored = bob.prekeys.to_bytes()
    assert all(secret in stored for secret in old_private)
    assert LocalPrekeys.from_bytes(stored).to_bytes() == stored

    assert bob.prekeys.expire(rotated_at + GRACE_PERIOD_MS) == [(old_id, old_last_resort)]
    assert old_id not in bob.prekeys.held_signed_prekey_ids()
    assert old_last_resort not in bob.prekeys.held_last_resort_ids()
    assert bob.prekeys.signed_prekey_for(old_id) is None
    assert bob.prekeys.last_resort_for(old_last_resort) is None
    stored = bob.prekeys.to_bytes()
    assert not any(secret in stored for secret in old_private)
    assert not any(secret in repr(bob.prekeys) for secret in (s.hex() for s in old_private))
    # Deleting is idempotent, and the current keys stay.
    assert bob.prekeys.expire(rotated_at + 10 * GRACE_PERIOD_MS) == []
    assert bob.prekeys.held_signed_prekey_ids() == {bob.prekeys.signed_prekey_id}


def test_weekly_rotation_holds_at_most_three_generations() -> None:
    bob = _bob()
    now = T0
    for _week in range(12):
        now += ROTATION_PERIOD_MS
        _rotate_and_publish(bob, now)
        bob.prekeys.expire(now)
        # current, and the ones replaced less than 14 days ago
        assert len(bob.prekeys.generations) <= 1 + GRACE_PERIOD_MS // ROTATION_PERIOD_MS


# ---- session starts --------------------------------------------------------------
def test_a_session_start_against_the_previous_signed_prekey_within_grace_opens() -> None:
    alice, bob = Device.create(), _bob()
    old_bundle = bob.bundle(one_time=False)
    late_first = Session.initiate(alice.identity, old_bundle).encrypt(b"written last week")
    rotated_at = T0 + ROTATION_PERIOD_MS
    _rotate_and_publish(bob, rotated_at)
    bob.prekeys.expire(rotated_at + GRACE_PERIOD_MS - DAY_MS)

    used: set[bytes] = set()
    assert _respond(bob, late_first, used) == b"written last week"
    # It used no one-time prekey and its keys are still held: the memory has it.
    with pytest.raises(PrekeyReplay):
        _respond(bob, late_first, used)
    # A start against the bundle the relay now serves works too.
    new_bundle = bob.bundle(one_time=False)
    assert new_bundle.signed_prekey_id > old_bundle.signed_prekey_id
    fresh = Session.initiate(alice.identity, new_bundle).encrypt(b"this week")
    assert _respond(bob, fresh, used) == b"this week"


def test_a_session_start_against_a_deleted_signed_prekey_is_refused_with_a_typed_error() -> None:
    alice, bob = Device.create(), _bob(batch=2)
    old_bundle = bob.bundle(one_time=False)
    with_one_time = bob.bundle(one_time=True)
    late_first = Session.initiate(alice.identity, old_bundle).encrypt(b"too late")
    late_with_one_time = Session.initiate(alice.identity, with_one_time).encrypt(b"too late")
    rotated_at = T0 + ROTATION_PERIOD_MS
    _rotate_and_publish(bob, rotated_at)
    assert bob.prekeys.expire(rotated_at + GRACE_PERIOD_MS)

    before = bob.prekeys.to_bytes()
    for message in (late_first, late_with_one_time):
        with pytest.raises(ExpiredPrekey):
            Session.respond(bob.identity, bob.prekeys, message)
        assert bob.prekeys.to_bytes() == before  # no one-time key used up
        start = SessionStart.of_envelope(message)
        assert start is not None and not start.needs_memory(bob.prekeys)
    # A typed error, and an authentication error for whoever catches only those.
    assert issubclass(ExpiredPrekey, AuthenticationError)


def _with_ids(message: bytes, signed_prekey_id: int, kem_prekey_id: int) -> bytes:
    envelope = Envelope.from_bytes(message)
    info = envelope.prekey
    assert info is not None
    changed = PrekeyInfo(
        info.identity,
        info.ephemeral,
        info.kem_ciphertext,
        signed_prekey_id,
        kem_prekey_id,
        info.one_time_prekey_id,
    )
    return Envelope(PREKEY_MESSAGE, changed, envelope.header, envelope.ciphertext).to_bytes()


def test_a_deleted_last_resort_prekey_is_refused_and_an_unknown_id_is_not_expired() -> None:
    alice, bob = Device.create(), _bob()
    message = Session.initiate(alice.identity, bob.bundle(one_time=False)).encrypt(b"x")
    old_last_resort = bob.prekeys.last_resort_id
    _rotate_and_publish(bob, T0 + ROTATION_PERIOD_MS)
    bob.prekeys.expire(T0 + ROTATION_PERIOD_MS + GRACE_PERIOD_MS)
    current = bob.prekeys.signed_prekey_id
    with pytest.raises(ExpiredPrekey):
        Session.respond(bob.identity, bob.prekeys, _with_ids(message, current, old_last_resort))
    never = bob.prekeys.signed_prekey_id + 1000
    # (1 and 2 were the ids of format 1 stores; this one never had them.)
    unknown = ((never, old_last_resort), (current, LAST_RESORT_ID_BASE + 1000), (1, 2))
    for signed, kem in unknown:
        with pytest.raises(AuthenticationError) as refused:
            Session.respond(bob.identity, bob.prekeys, _with_ids(message, signed, kem))
        assert not isinstance(refused.value, ExpiredPrekey)


# ---- format 1 stores ----------------------------------------------------------------
VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "protocol_v1.json").read_text()
)


def test_format_1_prekeys_rotate_at_once_and_late_starts_open_within_grace() -> None:
    vector = VECTORS["pqxdh"]
    rng = DeterministicRng(vector["seed"].encode())
    _alice = DeviceIdentity.generate(rng)
    bob = Device(
        DeviceIdentity.generate(rng), LocalPrekeys.from_bytes(bytes.fromhex(vector["bob_prekeys"]))
    )
    assert (bob.prekeys.signed_prekey_id, bob.prekeys.last_resort_id) == (1, 2)
    assert bob.prekeys.current_published
    assert bob.prekeys.rotation_due(T0)  # its age is unknown: rotated at once
    _rotate_and_publish(bob, T0)
    assert bob.prekeys.signed_prekey_id == SIGNED_PREKEY_ID_BASE + 1
    assert LocalPrekeys.from_bytes(bob.prekeys.to_bytes()).to_bytes() == bob.prekeys.to_bytes()

    recorded = bytes.fromhex(vector["prekey_message"])  # made against ids 1 and 2
    within = LocalPrekeys.from_bytes(bob.prekeys.to_bytes())
    _session, plaintext, _remote = Session.respond(bob.identity, within, recorded)
    assert plaintext == bytes.fromhex(vector["plaintext"])

    bob.prekeys.expire(T0 + GRACE_PERIOD_MS)
    with pytest.raises(ExpiredPrekey):
        Session.respond(bob.identity, bob.prekeys, recorded)
