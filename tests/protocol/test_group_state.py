"""Group state as signed epochs: replays refused, only admins change membership,
concurrent changes converge (app/protocol/group_state.py)."""

from __future__ import annotations

import itertools

import pytest

from app.crypto import SigningKey
from app.protocol import group_state as gs
from app.protocol.errors import AuthenticationError, MalformedMessage

GROUP = bytes(range(16))
KEYS = {name: SigningKey.generate() for name in ("alice", "bob", "carol", "dave")}


def _apply(
    current: gs.GroupState | None, change: gs.GroupChange, me: str, **kwargs: object
) -> gs.Applied:
    return gs.apply(current, change, KEYS[change.author].verify_key(), me, **kwargs)  # type: ignore[arg-type]


def _created() -> tuple[gs.GroupChange, gs.GroupState]:
    created = gs.create(GROUP, "Trip", "alice", ["bob", "carol"], KEYS["alice"])
    applied = _apply(None, created, "bob")
    assert applied.outcome is gs.Outcome.APPLIED and applied.state is not None
    return created, applied.state


def test_a_state_round_trips_and_its_digest_covers_everything() -> None:
    created, state = _created()
    assert gs.GroupState.from_bytes(state.to_bytes()) == state
    assert gs.GroupChange.from_bytes(created.to_bytes()) == created
    assert state.admins == ("alice",) and state.members == ("alice", "bob", "carol")
    digests = {
        state.digest(),
        gs.GroupState(GROUP, 0, "Trip!", state.members, state.admins, gs.NO_PARENT).digest(),
        gs.GroupState(GROUP, 0, "Trip", ("alice", "bob"), ("alice",), gs.NO_PARENT).digest(),
    }
    assert len(digests) == 3
    with pytest.raises(MalformedMessage):
        gs.GroupState(GROUP, 0, "x", ("bob", "alice"), ("alice",), gs.NO_PARENT)
    with pytest.raises(MalformedMessage):
        gs.GroupState(GROUP, 1, "x", ("alice",), ("alice",), gs.NO_PARENT)


def test_a_replayed_creation_cannot_put_a_removed_member_back() -> None:
    created, state = _created()
    removal = gs.change(state, "alice", KEYS["alice"], remove=("carol",))
    after = _apply(state, removal, "bob")
    assert after.outcome is gs.Outcome.APPLIED and after.state is not None
    assert after.state.members == ("alice", "bob")
    # The relay sends the creation (and the removal) again: nothing changes.
    assert _apply(after.state, created, "bob").outcome is gs.Outcome.STALE
    assert _apply(after.state, removal, "bob").outcome is gs.Outcome.DUPLICATE
    assert _apply(after.state, created, "bob").state == after.state


def test_only_admins_change_members_and_anyone_may_leave() -> None:
    _created_change, state = _created()
    with pytest.raises(gs.GroupStateError):
        gs.change(state, "bob", KEYS["bob"], add=("dave",))
    forged = gs.GroupChange(
        gs.GroupState(
            GROUP, 1, "Trip", ("alice", "bob", "carol", "dave"), ("alice",), state.digest()
        ),
        "bob",
        b"",
    )
    forged = gs.GroupChange(forged.state, "bob", KEYS["bob"].sign(forged.signed_bytes()))
    with pytest.raises(gs.GroupStateError, match="may not change"):
        _apply(state, forged, "carol")
    leaving = gs.leave(state, "bob", KEYS["bob"])
    left = _apply(state, leaving, "carol")
    assert left.state is not None and left.state.members == ("alice", "carol")
    # Leaving is for oneself only: removing someone else on the way is refused.
    sneaky = gs.GroupChange(
        gs.GroupState(GROUP, 1, "Trip", ("alice",), ("alice",), state.digest()), "bob", b""
    )
    sneaky = gs.GroupChange(sneaky.state, "bob", KEYS["bob"].sign(sneaky.signed_bytes()))
    with pytest.raises(gs.GroupStateError):
        _apply(state, sneaky, "carol")


def test_a_change_signed_by_someone_else_is_refused() -> None:
    _created_change, state = _created()
    change = gs.change(state, "alice", KEYS["alice"], add=("dave",))
    with pytest.raises(AuthenticationError):
        gs.apply(state, change, KEYS["bob"].verify_key(), "carol")
    tampered = gs.GroupChange(
        gs.GroupState(
            GROUP, 1, "Trip", ("alice", "bob", "carol", "eve"), ("alice",), state.digest()
        ),
        "alice",
        change.signature,
    )
    with pytest.raises(AuthenticationError):
        _apply(state, tampered, "carol")


def test_two_admins_changing_at_once_converge_whatever_the_order() -> None:
    _created_change, state = _created()
    with_admin = gs.change(state, "alice", KEYS["alice"], admins=("alice", "bob"))
    parent = _apply(state, with_admin, "carol").state
    assert parent is not None
    by_alice = gs.change(parent, "alice", KEYS["alice"], add=("dave",))
    by_bob = gs.change(parent, "bob", KEYS["bob"], remove=("carol",), title="Trip 2")
    finals = set()
    for first, second in itertools.permutations([by_alice, by_bob]):
        held = _apply(parent, first, "alice").state
        assert held is not None
        outcome = _apply(held, second, "alice", parent=parent)
        assert outcome.outcome in (gs.Outcome.CONFLICT_KEPT, gs.Outcome.CONFLICT_SWITCHED)
        assert outcome.state is not None
        finals.add(outcome.state.digest())
    assert len(finals) == 1


def test_an_invitation_needs_an_admin_and_a_change_that_skips_epochs_needs_one_too() -> None:
    created, state = _created()
    assert _apply(None, created, "dave").outcome is gs.Outcome.NOT_FOR_US
    step1 = gs.change(state, "alice", KEYS["alice"], add=("dave",))
    state1 = _apply(state, step1, "bob").state
    assert state1 is not None
    step2 = gs.change(state1, "alice", KEYS["alice"], title="Trip, later")
    # Carol missed step 1: step 2, signed by an admin she knows, still applies.
    skipped = _apply(state, step2, "carol")
    assert skipped.outcome is gs.Outcome.APPLIED and skipped.state == step2.state
