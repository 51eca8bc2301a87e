"""Sender Keys, safety numbers, attachments, content encodings and parser fuzzing."""

from __future__ import annotations

import contextlib
import io

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from app.protocol import AuthenticationError, MalformedMessage, ProtocolError, ReplayError
from app.protocol.attachments import AttachmentSecret, decrypt_attachment, encrypt_attachment
from app.protocol.content import (
    AttachmentPointer,
    GroupUpdate,
    Receipt,
    SenderKey,
    Text,
    TimerUpdate,
    decode_content,
    decode_frame,
    encode_content,
)
from app.protocol.identity import DeviceIdentity, LocalPrekeys, PublicIdentity
from app.protocol.ratchet import RatchetState
from app.protocol.safety import (
    display_groups,
    identity_changed,
    qr_payload,
    safety_number,
    verify_scanned,
)
from app.protocol.sender_keys import SenderKeyDistribution, SenderKeyState
from app.protocol.session import Envelope, Session
from tests.protocol.helpers import start_pair


def test_sender_key_rotation_locks_out_a_removed_member() -> None:
    group_id = b"g1"
    alice = SenderKeyState.create(group_id)
    bob_view = SenderKeyState.from_distribution(
        SenderKeyDistribution.from_bytes(alice.distribution().to_bytes())
    )
    carol_view = SenderKeyState.from_distribution(alice.distribution())
    message = alice.encrypt(b"before carol left")
    assert bob_view.decrypt(message) == b"before carol left"
    assert carol_view.decrypt(message) == b"before carol left"
    # Carol is removed: Alice rotates and sends the new key only to Bob.
    alice = SenderKeyState.create(group_id)
    bob_view = SenderKeyState.from_distribution(alice.distribution())
    after = alice.encrypt(b"after carol left")
    assert bob_view.decrypt(after) == b"after carol left"
    with pytest.raises(AuthenticationError):
        carol_view.decrypt(after)


def test_group_message_signature_proves_the_sender() -> None:
    alice = SenderKeyState.create(b"g")
    mallory = SenderKeyState.create(b"g")
    bob_view = SenderKeyState.from_distribution(alice.distribution())
    # Mallory knows Alice's chain key (she is in the group) but not her signing key.
    impostor = SenderKeyState.from_distribution(alice.distribution())
    impostor.signing_key = mallory.signing_key
    with pytest.raises(AuthenticationError, match="signature"):
        bob_view.decrypt(impostor.encrypt(b"I am alice"))
    assert bob_view.decrypt(alice.encrypt(b"really alice")) == b"really alice"


def test_sender_key_state_round_trips_and_replays_fail() -> None:
    alice = SenderKeyState.create(b"g")
    bob_view = SenderKeyState.from_distribution(alice.distribution())
    messages = [alice.encrypt(f"{i}".encode()) for i in range(4)]
    assert bob_view.decrypt(messages[3]) == b"3"
    restored = SenderKeyState.from_bytes(bob_view.to_bytes())
    assert restored.to_bytes() == bob_view.to_bytes()
    assert restored.decrypt(messages[1]) == b"1"
    with pytest.raises(ReplayError):
        restored.decrypt(messages[1])
    with pytest.raises(ReplayError):
        restored.decrypt(messages[3])
    assert SenderKeyState.from_bytes(alice.to_bytes()).signing_key is not None


def test_safety_numbers_are_order_independent_and_detect_changes() -> None:
    alice, bob, mallory = (DeviceIdentity.generate().public.to_bytes() for _ in range(3))
    number = safety_number(alice, "alice", bob, "bob")
    assert number == safety_number(bob, "bob", alice, "alice")
    assert len(number) == 60
    assert number.isdigit()
    assert len(display_groups(number)) == 12
    assert safety_number(alice, "alice", mallory, "bob") != number
    shown_by_bob = qr_payload(bob, "bob", alice, "alice")
    assert verify_scanned(shown_by_bob, alice, "alice", bob, "bob")
    assert not verify_scanned(
        qr_payload(mallory, "bob", alice, "alice"), alice, "alice", bob, "bob"
    )
    with pytest.raises(MalformedMessage):
        verify_scanned(b"junk", alice, "alice", bob, "bob")
    assert identity_changed(bob, mallory)
    assert not identity_changed(None, bob)
    assert not identity_changed(bob, bob)


def test_attachment_round_trip_and_tamper_detection() -> None:
    data = bytes(range(256)) * 1000 + b"tail"  # several segments and a short last one
    encrypted = io.BytesIO()
    secret = encrypt_attachment(io.BytesIO(data), encrypted)
    assert secret.size == len(data)
    assert data[:1000] not in encrypted.getvalue()
    out = io.BytesIO()
    assert decrypt_attachment(io.BytesIO(encrypted.getvalue()), out, secret) == len(data)
    assert out.getvalue() == data
    blob = encrypted.getvalue()
    for position in (0, 5, 100, len(blob) // 2, len(blob) - 1):
        altered = bytearray(blob)
        altered[position] ^= 1
        with pytest.raises(ProtocolError):
            decrypt_attachment(io.BytesIO(bytes(altered)), io.BytesIO(), secret)
    for cut in (3, 70_000, len(blob) - 16):
        with pytest.raises(ProtocolError):
            decrypt_attachment(io.BytesIO(blob[:cut]), io.BytesIO(), secret)
    wrong = AttachmentSecret(bytes(32), secret.digest, secret.size)
    with pytest.raises(AuthenticationError):
        decrypt_attachment(io.BytesIO(blob), io.BytesIO(), wrong)
    empty = io.BytesIO()
    empty_secret = encrypt_attachment(io.BytesIO(b""), empty)
    assert decrypt_attachment(io.BytesIO(empty.getvalue()), io.BytesIO(), empty_secret) == 0


@pytest.mark.parametrize(
    "content",
    [
        Text("id-1", 1_700_000_000_000, "héllo ✓", 30),
        Receipt(2, ("a", "b")),
        AttachmentPointer(
            "id", 5, "cap", "blob", bytes(32), bytes(range(32)), 9, "f.txt", "text/plain"
        ),
        GroupUpdate("id", 6, b"gid", "Friends", ("alice", "bob")),
        SenderKey(b"\x01distribution"),
        TimerUpdate("id", 7, 3600),
    ],
)
def test_content_round_trips(content: object) -> None:
    assert decode_content(encode_content(content)) == content  # type: ignore[arg-type]


PARSERS = [
    decode_content,
    decode_frame,
    Envelope.from_bytes,
    Session.from_bytes,
    RatchetState.from_bytes,
    PublicIdentity.from_bytes,
    LocalPrekeys.from_bytes,
    DeviceIdentity.from_bytes,
    SenderKeyState.from_bytes,
    SenderKeyDistribution.from_bytes,
]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PARSERS), st.binary(max_size=300))
def test_parsers_raise_only_protocol_errors(parser: object, data: bytes) -> None:
    from app.crypto import CryptoError

    try:
        parser(data)  # type: ignore[operator]
    except ProtocolError:
        pass
    except CryptoError:
        # Only from key constructors given bytes of the right length that are not keys.
        pass


FUZZ_PAIR = start_pair()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 3000))
def test_mutated_valid_envelopes_raise_only_protocol_errors(noise: bytes, position: int) -> None:
    _alice, _bob, alice_session, bob_session = FUZZ_PAIR
    envelope = bytearray(alice_session.encrypt(b"fuzz"))
    position %= len(envelope)
    envelope[position : position + len(noise)] = noise
    with contextlib.suppress(ProtocolError):
        bob_session.decrypt(bytes(envelope))
