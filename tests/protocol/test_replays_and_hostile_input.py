"""Protocol v2 (issue #18) in the core: an old session start is refused at any
distance, and no input reaches anything but the protocol's own errors."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from app.protocol import AuthenticationError, PrekeyReplay, ProtocolError
from app.protocol.ratchet import MAX_OLD_CHAINS, Header
from app.protocol.session import NORMAL_MESSAGE, Envelope, Session, SessionStart
from tests.protocol.helpers import Device, start_pair


def _respond_remembering(bob: Device, used: set[bytes], envelope: bytes) -> Session:
    """What the messenger does: respond, then remember a start that needs it."""
    session, _plaintext, _remote = Session.respond(
        bob.identity, bob.prekeys, envelope, used_starts=used
    )
    start = SessionStart.of_envelope(envelope)
    assert start is not None
    if start.needs_memory(bob.prekeys):
        used.add(start.digest)
    return session


def test_an_old_first_message_is_refused_after_any_number_of_turns() -> None:
    # Bob's one-time prekeys are drained: the start uses only long-lived keys.
    alice, bob = Device.create(), Device.create(batch=0)
    used: set[bytes] = set()
    alice_session = Session.initiate(alice.identity, bob.bundle())
    first = alice_session.encrypt(b"first")
    bob_session = _respond_remembering(bob, used, first)
    for turn in range(MAX_OLD_CHAINS + 5):
        assert alice_session.decrypt(bob_session.encrypt(b"b%d" % turn)) == b"b%d" % turn
        assert bob_session.decrypt(alice_session.encrypt(b"a%d" % turn)) == b"a%d" % turn
    # The live session no longer recognises it (its chain is long retired) ...
    with pytest.raises(AuthenticationError):
        bob_session.decrypt(first)
    # ... and only the memory stops it from starting a second session.
    before = (bob.prekeys.to_bytes(), bob_session.to_bytes())
    with pytest.raises(PrekeyReplay):
        Session.respond(bob.identity, bob.prekeys, first, used_starts=used)
    assert (bob.prekeys.to_bytes(), bob_session.to_bytes()) == before
    assert bob_session.decrypt(alice_session.encrypt(b"still here")) == b"still here"


def test_every_message_of_one_start_shares_its_digest_and_a_new_start_does_not() -> None:
    alice, bob = Device.create(), Device.create(batch=0)
    session = Session.initiate(alice.identity, bob.bundle())
    one, two = (
        SessionStart.of_envelope(session.encrypt(b"1")),
        SessionStart.of_envelope(session.encrypt(b"2")),
    )
    again = SessionStart.of_envelope(Session.initiate(alice.identity, bob.bundle()).encrypt(b"1"))
    assert one is not None and two is not None and again is not None
    assert one.digest == two.digest != again.digest
    assert one.needs_memory(bob.prekeys)
    _a, _b, _alice_session, bob_session = start_pair()
    assert SessionStart.of_envelope(bob_session.encrypt(b"normal")) is None


def test_a_start_that_used_one_time_keys_needs_no_memory_and_is_still_a_replay() -> None:
    alice, bob = Device.create(), Device.create()
    bundle = bob.bundle()
    first = Session.initiate(alice.identity, bundle).encrypt(b"a")
    start = SessionStart.of_envelope(first)
    assert start is not None and not start.needs_memory(bob.prekeys)
    Session.respond(bob.identity, bob.prekeys, first)
    with pytest.raises(PrekeyReplay):
        Session.respond(bob.identity, bob.prekeys, first)


def test_a_message_under_the_peers_signed_prekey_before_any_reply_is_refused() -> None:
    """The crafted message that hit an assert in the ratchet: a normal message whose
    ratchet key is the signed prekey the initiator still treats as Bob's."""
    alice, bob = Device.create(), Device.create()
    bundle = bob.bundle()
    alice_session = Session.initiate(alice.identity, bundle)
    alice_session.encrypt(b"hello")
    before = alice_session.to_bytes()
    header = Header(bundle.signed_prekey.to_bytes(), 0, 0).to_bytes()
    crafted = Envelope(NORMAL_MESSAGE, None, header, bytes(48)).to_bytes()
    with pytest.raises(AuthenticationError):
        alice_session.decrypt(crafted)
    assert alice_session.to_bytes() == before


# ---- every mutation of every kind of envelope ends in a ProtocolError -----------

_ALICE, _BOB = Device.create(), Device.create(batch=0)
_PRE_REPLY = Session.initiate(_ALICE.identity, _BOB.bundle())
_FIRST = _PRE_REPLY.encrypt(b"first")
_RESPONDER, _, _ = Session.respond(_BOB.identity, _BOB.prekeys, _FIRST)
_NORMAL = _RESPONDER.encrypt(b"reply")
_SPK = _BOB.bundle().signed_prekey.to_bytes()
_SAMPLES = [_FIRST, _NORMAL, Envelope(NORMAL_MESSAGE, None, Header(_SPK, 0, 0).to_bytes(), b"x")]

MUTATION = st.tuples(
    st.sampled_from(range(len(_SAMPLES))),
    st.sampled_from(["flip", "truncate", "extend", "splice", "spk-header", "numbers"]),
    st.integers(min_value=0, max_value=1 << 20),
    st.binary(min_size=0, max_size=64),
)


def _mutate(choice: tuple[int, str, int, bytes]) -> bytes:
    index, how, where, noise = choice
    sample = _SAMPLES[index]
    body = bytearray(sample if isinstance(sample, bytes) else sample.to_bytes())
    at = where % len(body)
    if how == "flip":
        body[at] ^= 1 << (where % 8)
    elif how == "truncate":
        del body[at:]
    elif how == "extend":
        body += noise
    elif how == "splice":
        body[at : at + len(noise)] = noise
    elif how == "spk-header":
        start = len(body) - 40 - 4 - len(Envelope.from_bytes(bytes(body)).ciphertext)
        body[start : start + 32] = _SPK
    else:
        start = len(body) - 8 - 4 - len(Envelope.from_bytes(bytes(body)).ciphertext)
        body[start : start + 8] = (where % (1 << 64)).to_bytes(8, "big")
    return bytes(body)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(MUTATION)
def test_no_mutated_envelope_raises_anything_but_a_protocol_error(
    choice: tuple[int, str, int, bytes],
) -> None:
    data = _mutate(choice)
    for state in (_PRE_REPLY, _RESPONDER):
        session = Session.from_bytes(state.to_bytes())
        before = session.to_bytes()
        try:
            session.decrypt(data)
        except ProtocolError:
            assert session.to_bytes() == before
    prekeys = _BOB.prekeys.to_bytes()
    try:
        Session.respond(_BOB.identity, _BOB.prekeys, data)
    except ProtocolError:
        assert _BOB.prekeys.to_bytes() == prekeys
