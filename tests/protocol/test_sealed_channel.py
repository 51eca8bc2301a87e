"""Sealed channels (app/protocol/sealed.py, docs/protocol.md §11): the fast path of
sealed sender. The vectors, an independent derivation with the standard library
and `cryptography`, and what an adversary on the relay can do with channel
envelopes: link them, replay them, reorder them, or present them to the wrong
channel."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.crypto import DeterministicRng, SigningKey
from app.protocol.errors import MalformedMessage, ReplayError
from app.protocol.identity import DeviceIdentity
from app.protocol.sealed import (
    CHANNEL_MAX_MESSAGES,
    CHANNEL_OVERHEAD,
    CHANNEL_TAG_LENGTH,
    CHANNEL_WINDOW,
    SMALLEST_BUCKET,
    ChannelReplay,
    ReceiveChannel,
    SealedSenderError,
    SendChannel,
    SenderCertificate,
    UnknownChannelTag,
    channel_chain_key,
    channel_tag,
    open_sealed,
    seal,
    unseal,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "sealed_channel_v1.json"
NOW = 1_700_000_000_000
DAY = 86_400_000
SEED = bytes(range(32))


def _fixture() -> tuple[SigningKey, DeviceIdentity, DeviceIdentity, bytes]:
    relay = SigningKey.generate(DeterministicRng(b"relay certificate key"))
    alice = DeviceIdentity.generate(DeterministicRng(b"alice identity"))
    bob = DeviceIdentity.generate(DeterministicRng(b"bob identity"))
    certificate = SenderCertificate.issue(relay, "alice", 1, alice.public.to_bytes(), NOW + DAY)
    return relay, alice, bob, certificate.to_bytes()


def _pair(seed: bytes = SEED) -> tuple[SendChannel, ReceiveChannel]:
    _relay, _alice, bob, certificate = _fixture()
    recipient = bob.public.to_bytes()
    return (
        SendChannel.start(seed, certificate, recipient),
        ReceiveChannel.start(seed, certificate, recipient),
    )


def _vector() -> dict[str, str]:
    relay, _alice, bob, certificate = _fixture()
    frames = [bytes.fromhex("0101") + b"first channel message", bytes.fromhex("0101") + b"second"]
    opener = seal(
        bob.public,
        certificate,
        bytes.fromhex("0101") + b"the opener",
        DeterministicRng(b"ephemeral"),
        channel_seed=SEED,
    )
    sender = SendChannel.start(SEED, certificate, bob.public.to_bytes())
    return {
        "relay_key": relay.verify_key().to_bytes().hex(),
        "certificate": certificate.hex(),
        "recipient_identity": bob.public.to_bytes().hex(),
        "seed": SEED.hex(),
        "opener": opener.hex(),
        "chain_key_0": channel_chain_key(SEED, certificate, bob.public.to_bytes()).hex(),
        "frame_0": frames[0].hex(),
        "envelope_0": sender.seal(frames[0]).hex(),
        "frame_1": frames[1].hex(),
        "envelope_1": sender.seal(frames[1]).hex(),
    }


def test_the_published_vectors_still_hold() -> None:
    published = json.loads(VECTORS.read_text())
    assert _vector() == {key: published[key] for key in _vector()}
    _relay, _alice, bob, certificate = _fixture()
    opened = open_sealed(
        bob,
        bytes.fromhex(published["opener"]),
        (SigningKey.generate(DeterministicRng(b"relay certificate key")).verify_key(),),
        NOW,
    )
    assert opened.channel_seed == bytes.fromhex(published["seed"])
    receiver = ReceiveChannel.start(SEED, certificate, bob.public.to_bytes())
    # Delivered the other way round: both open, from the window.
    assert receiver.open(bytes.fromhex(published["envelope_1"])).hex() == published["frame_1"]
    assert receiver.open(bytes.fromhex(published["envelope_0"])).hex() == published["frame_0"]


def _independent_open(chain_key: bytes, envelope: bytes) -> tuple[bytes, bytes]:
    """docs/protocol.md §11 read literally: (frame, next chain key)."""
    # Keyed BLAKE2b (RFC 7693) from the standard library, not through app.crypto.
    tag_block = hashlib.blake2b(digest_size=28, key=chain_key, person=b"CL-channel-tag").digest()
    key_block = hashlib.blake2b(digest_size=64, key=chain_key, person=b"CL-channel-step").digest()
    assert envelope[0] == 2
    assert envelope[1:17] == tag_block[:16]
    inner = AESGCM(key_block[:32]).decrypt(tag_block[16:28], envelope[17:], envelope[:17])
    length = int.from_bytes(inner[:4], "big")
    assert inner[4 + length :] == bytes(len(inner) - 4 - length)
    return inner[4 : 4 + length], key_block[32:]


def test_an_independent_derivation_opens_the_vectors() -> None:
    published = json.loads(VECTORS.read_text())
    certificate = bytes.fromhex(published["certificate"])
    recipient = bytes.fromhex(published["recipient_identity"])
    # HKDF-SHA256 (RFC 5869) by hand: extract with SHA-256(certificate) as salt.
    prk = hmac.digest(hashlib.sha256(certificate).digest(), SEED, "sha256")
    info = b"Cipherline_SealedChannel_v1" + recipient
    chain_key = hmac.digest(prk, info + b"\x01", "sha256")
    assert chain_key.hex() == published["chain_key_0"]
    frame, chain_key = _independent_open(chain_key, bytes.fromhex(published["envelope_0"]))
    assert frame.hex() == published["frame_0"]
    frame, chain_key = _independent_open(chain_key, bytes.fromhex(published["envelope_1"]))
    assert frame.hex() == published["frame_1"]


def _common_run(first: bytes, second: bytes, length: int = 8) -> bool:
    runs = {first[i : i + length] for i in range(len(first) - length + 1)}
    return any(second[i : i + length] in runs for i in range(len(second) - length + 1))


def test_successive_envelopes_share_no_bytes_and_tags_never_repeat() -> None:
    sender, receiver = _pair()
    frame = b"\x01\x02" + bytes(100)
    envelopes = [sender.seal(frame) for _ in range(200)]
    # The same frame again and again: past the version byte, no 8-byte run in common.
    for earlier, later in itertools.pairwise(envelopes):
        assert not _common_run(earlier[1:], later[1:])
    tags = [channel_tag(envelope) for envelope in envelopes]
    assert len(set(tags)) == len(tags)
    assert all(len(envelope) == SMALLEST_BUCKET + CHANNEL_OVERHEAD for envelope in envelopes)
    for envelope in envelopes:
        assert receiver.open(envelope) == frame


def test_a_group_fan_out_over_channels_shares_no_bytes() -> None:
    relay, alice, _bob, certificate = _fixture()
    members = [DeviceIdentity.generate(DeterministicRng(f"member {i}".encode())) for i in range(4)]
    frame = b"\x02\x01" + b"one group message" + bytes(80)
    copies = []
    for index, member in enumerate(members):
        seed = hashlib.sha256(b"seed %d" % index).digest()
        sender = SendChannel.start(seed, certificate, member.public.to_bytes())
        copies.append(sender.seal(frame))
    for first_index, first in enumerate(copies):
        for second in copies[first_index + 1 :]:
            assert not _common_run(first[1:], second[1:])
    # One seed sent to two devices still gives two unrelated channels: the chain is
    # bound to the recipient's identity.
    to_first = SendChannel.start(SEED, certificate, members[0].public.to_bytes()).seal(frame)
    to_second = SendChannel.start(SEED, certificate, members[1].public.to_bytes()).seal(frame)
    assert not _common_run(to_first[1:], to_second[1:])
    with pytest.raises(UnknownChannelTag):
        ReceiveChannel.start(SEED, certificate, members[1].public.to_bytes()).open(to_first)
    del relay, alice


def test_a_replay_never_opens_in_any_order() -> None:
    sender, receiver = _pair()
    envelopes = [sender.seal(b"\x01\x02message %d" % i) for i in range(20)]
    for envelope in envelopes:
        receiver.open(envelope)
    replays = envelopes[:]
    random.Random(7).shuffle(replays)
    for envelope in replays:
        with pytest.raises(ChannelReplay):
            receiver.open(envelope)
    assert issubclass(ChannelReplay, ReplayError)
    # A replay interleaved with new envelopes: the new ones still open.
    fresh = sender.seal(b"\x01\x02new")
    with pytest.raises(ChannelReplay):
        receiver.open(envelopes[3])
    assert receiver.open(fresh) == b"\x01\x02new"


def test_out_of_order_within_the_window_opens_and_outside_is_refused() -> None:
    sender, receiver = _pair()
    envelopes = [sender.seal(b"\x01\x02%d" % i) for i in range(3 * CHANNEL_WINDOW)]
    # The whole first window, backwards.
    for index in reversed(range(CHANNEL_WINDOW)):
        assert receiver.open(envelopes[index]) == b"\x01\x02%d" % index
    # One far beyond the window (lost envelopes in between) is not expected yet.
    with pytest.raises(UnknownChannelTag):
        receiver.open(envelopes[3 * CHANNEL_WINDOW - 1])
    # Skipping ahead within the window moves it on; the skipped ones still open late.
    assert receiver.open(envelopes[2 * CHANNEL_WINDOW - 1]) == b"\x01\x02%d" % (
        2 * CHANNEL_WINDOW - 1
    )
    assert receiver.open(envelopes[CHANNEL_WINDOW + 3]) == b"\x01\x02%d" % (CHANNEL_WINDOW + 3)
    assert receiver.open(envelopes[3 * CHANNEL_WINDOW - 1]) == b"\x01\x02%d" % (
        3 * CHANNEL_WINDOW - 1
    )
    # A tag nobody derived: refused as unknown, nothing changes.
    forged = bytes([2]) + bytes(CHANNEL_TAG_LENGTH) + envelopes[0][17:]
    before = receiver.to_bytes()
    with pytest.raises(UnknownChannelTag):
        receiver.open(forged)
    assert receiver.to_bytes() == before


def test_an_altered_envelope_does_not_open_and_spends_nothing() -> None:
    sender, receiver = _pair()
    envelope = sender.seal(b"\x01\x02hello")
    for position in (20, 40, len(envelope) - 1):
        altered = bytearray(envelope)
        altered[position] ^= 1
        with pytest.raises(SealedSenderError):
            receiver.open(bytes(altered))
    # The relay cannot burn a tag by sending garbage under it: the real one opens.
    assert receiver.open(envelope) == b"\x01\x02hello"
    with pytest.raises(MalformedMessage):
        receiver.open(envelope[:10])
    # A channel envelope is not a version 1 envelope, nor the reverse.
    _relay, _alice, bob, _certificate = _fixture()
    with pytest.raises(MalformedMessage):
        unseal(bob, envelope)


def test_state_round_trips_and_hides_its_keys() -> None:
    sender, receiver = _pair()
    envelopes = [sender.seal(b"\x01\x02%d" % i) for i in range(5)]
    receiver.open(envelopes[2])
    sender = SendChannel.from_bytes(sender.to_bytes())
    receiver = ReceiveChannel.from_bytes(receiver.to_bytes())
    assert receiver.open(envelopes[0]) == b"\x01\x020"
    with pytest.raises(ChannelReplay):
        receiver.open(envelopes[2])
    assert receiver.open(sender.seal(b"\x01\x02next")) == b"\x01\x02next"
    assert "keys hidden" in repr(sender) and "keys hidden" in repr(receiver)
    assert receiver.sender().username == "alice"


def test_a_channel_ends_after_its_last_message() -> None:
    sender, receiver = _pair()
    for index in range(CHANNEL_MAX_MESSAGES):
        assert receiver.open(sender.seal(b"\x01\x02%d" % index)) == b"\x01\x02%d" % index
    assert sender.exhausted
    with pytest.raises(ValueError, match="last message"):
        sender.seal(b"\x01\x02beyond")
    # The recipient derived no key past the last index: it expects nothing more.
    assert all(not receiver.expects(tag) for tag in receiver.tags())


def test_the_window_is_bounded() -> None:
    sender, receiver = _pair()
    envelopes = [sender.seal(b"\x01\x02%d" % i) for i in range(10 * CHANNEL_WINDOW)]
    # Every other envelope lost: the skipped keys are kept only up to a bound.
    for envelope in envelopes[::2]:
        receiver.open(envelope)
    assert len(receiver.tags()) <= 4 * CHANNEL_WINDOW
    with pytest.raises(UnknownChannelTag):
        receiver.open(envelopes[1])  # skipped long ago: its key was deleted
