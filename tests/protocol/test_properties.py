"""Random interleavings of sends, drops, duplicates and reorders (hypothesis)."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from app.protocol import AuthenticationError, MalformedMessage, ProtocolError, ReplayError
from app.protocol.sender_keys import SenderKeyState
from tests.protocol.helpers import start_pair

PAIR = start_pair()
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["a_send", "b_send", "deliver", "duplicate", "tamper", "drop"]),
        st.integers(min_value=0, max_value=1000),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS)
def test_two_parties_under_any_interleaving(actions: list[tuple[str, int]]) -> None:
    from app.protocol.session import Session

    _alice, _bob, alice0, bob0 = PAIR
    sessions = {
        "a": Session.from_bytes(alice0.to_bytes()),
        "b": Session.from_bytes(bob0.to_bytes()),
    }
    in_flight: list[tuple[str, bytes, bytes]] = []  # (receiver, envelope, plaintext)
    delivered: set[bytes] = set()
    counter = 0
    for action, pick in actions:
        if action in ("a_send", "b_send"):
            sender, receiver = ("a", "b") if action == "a_send" else ("b", "a")
            plaintext = f"{sender}{counter}".encode()
            counter += 1
            in_flight.append((receiver, sessions[sender].encrypt(plaintext), plaintext))
        elif in_flight:
            index = pick % len(in_flight)
            receiver, envelope, plaintext = in_flight[index]
            if action == "drop":
                in_flight.pop(index)
            elif action == "tamper":
                altered = bytearray(envelope)
                altered[pick % len(altered)] ^= 1 + (pick % 255)
                try:
                    sessions[receiver].decrypt(bytes(altered))
                except (AuthenticationError, MalformedMessage, ReplayError):
                    pass
                else:
                    raise AssertionError("an altered message was accepted")
            else:
                if action == "deliver":
                    in_flight.pop(index)
                if plaintext in delivered:
                    try:
                        sessions[receiver].decrypt(envelope)
                    except ReplayError:
                        continue
                    raise AssertionError("a replayed message was accepted")
                assert sessions[receiver].decrypt(envelope) == plaintext
                delivered.add(plaintext)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),
            st.sampled_from(["send", "deliver", "dup", "drop"]),
            st.integers(0, 500),
        ),
        min_size=1,
        max_size=50,
    )
)
def test_group_of_five_under_any_interleaving(actions: list[tuple[int, str, int]]) -> None:
    group_id = b"group-of-five"
    own = [SenderKeyState.create(group_id) for _ in range(5)]
    # Each member holds every other member's chain, received over pairwise sessions.
    views = {
        (holder, owner): SenderKeyState.from_distribution(own[owner].distribution())
        for holder in range(5)
        for owner in range(5)
        if holder != owner
    }
    in_flight: list[tuple[int, int, bytes, bytes]] = []  # receiver, sender, message, plaintext
    seen: set[tuple[int, bytes]] = set()
    counter = 0
    for member, action, pick in actions:
        if action == "send":
            plaintext = f"{member}:{counter}".encode()
            counter += 1
            message = own[member].encrypt(plaintext)
            in_flight.extend((r, member, message, plaintext) for r in range(5) if r != member)
        elif in_flight:
            index = pick % len(in_flight)
            receiver, sender, message, plaintext = in_flight[index]
            if action == "drop":
                in_flight.pop(index)
                continue
            if action == "deliver":
                in_flight.pop(index)
            state = views[(receiver, sender)]
            if (receiver, plaintext) in seen:
                try:
                    state.decrypt(message)
                except ReplayError:
                    continue
                raise AssertionError("a replayed group message was accepted")
            assert state.decrypt(message) == plaintext
            seen.add((receiver, plaintext))
            forged = bytearray(message)
            forged[pick % len(forged)] ^= 0x80
            try:
                state.decrypt(bytes(forged))
            except ProtocolError:
                pass
            else:
                raise AssertionError("an altered group message was accepted")
