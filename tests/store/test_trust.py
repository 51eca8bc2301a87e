"""The trust states of a contact's identity key (app/store/trust.py), in the store."""

from __future__ import annotations

import pytest

from app.store import Store
from app.store.trust import TRANSITIONS, IdentityTrust, TrustEvent, next_trust


def test_only_accepting_or_verifying_ends_an_unaccepted_identity() -> None:
    unaccepted = IdentityTrust.UNACCEPTED
    for event in (TrustEvent.KEY_CHANGED, TrustEvent.DISMISS, TrustEvent.UNVERIFY):
        assert next_trust(unaccepted, event) == unaccepted
    assert next_trust(unaccepted, TrustEvent.ACCEPT) == IdentityTrust.UNVERIFIED
    assert next_trust(unaccepted, TrustEvent.VERIFY) == IdentityTrust.VERIFIED
    # Only a verified contact's change blocks; an unverified one's only warns.
    assert next_trust(IdentityTrust.VERIFIED, TrustEvent.KEY_CHANGED) == unaccepted
    assert next_trust(IdentityTrust.UNVERIFIED, TrustEvent.KEY_CHANGED) == IdentityTrust.CHANGED
    assert next_trust(IdentityTrust.CHANGED, TrustEvent.KEY_CHANGED) == IdentityTrust.CHANGED
    assert set(TRANSITIONS) == set(IdentityTrust)


@pytest.mark.parametrize("state", list(IdentityTrust))
def test_every_state_round_trips_through_its_columns(state: IdentityTrust) -> None:
    verified, changed, unaccepted = state.columns
    assert IdentityTrust.of(bool(verified), bool(changed), bool(unaccepted)) == state


def test_a_verified_contacts_change_is_held_until_accepted(store: Store) -> None:
    contacts = store.contacts
    contacts.observe_identity("dave", b"key-1", now=1)
    contacts.set_verified("dave", True, now=2)
    assert contacts.observe_identity("dave", b"key-2", now=3)
    assert contacts.unaccepted(["dave", "erin"]) == ["dave"]
    contacts.acknowledge_change("dave")  # "Dismiss" is not acceptance
    contacts.set_verified("dave", False, now=4)
    assert contacts.observe_identity("dave", b"key-3", now=5)
    dave = contacts.get("dave")
    assert dave is not None and dave.trust == IdentityTrust.UNACCEPTED
    assert dave.identity_changed and not dave.verified
    store.held_sends.add("dave", b"receipt", now=6)
    assert [h.body for h in store.held_sends.for_recipient("dave")] == [b"receipt"]
    assert contacts.accept_identity("dave", verified=True, now=7)
    dave = contacts.get("dave")
    assert dave is not None and dave.trust == IdentityTrust.VERIFIED
    assert contacts.unaccepted(["dave"]) == []
    assert not contacts.accept_identity("dave", verified=False, now=8)  # nothing to accept


def test_an_unverified_contacts_change_only_warns(store: Store) -> None:
    contacts = store.contacts
    contacts.observe_identity("dave", b"key-1", now=1)
    assert contacts.observe_identity("dave", b"key-2", now=2)
    dave = contacts.get("dave")
    assert dave is not None and dave.trust == IdentityTrust.CHANGED
    assert contacts.unaccepted(["dave"]) == []
    contacts.acknowledge_change("dave")
    dave = contacts.get("dave")
    assert dave is not None and dave.trust == IdentityTrust.UNVERIFIED
