"""What a linked device is given of the account: contacts with their trust, the
device lists held for them, groups with their signed state, and direct chats
(docs/protocol.md §14, "sync state").

Encoded as canonical JSON (sorted keys, no spaces) with a version, carried inside
the end-to-end encrypted provisioning message; never written anywhere else. The
new device takes it into its empty store in one transaction: contacts keep the
verification the user gave them on the other device, so the safety numbers the
user compared stay compared.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from app.protocol.device_list import DeviceListError, declared, open_device_list
from app.store import Store

SYNC_STATE_VERSION = 1
# About 3,000 contacts with their device lists and groups; what the link
# mailbox carries (64 messages of 64 KiB per side) with room to spare.
MAX_SYNC_STATE = 3 * 1024 * 1024


class SyncStateError(ValueError):
    """A sync state that is malformed or of an unknown version."""


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SyncStateError("a binary field of the sync state is not text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SyncStateError("a binary field of the sync state is not base64") from None


def export_sync_state(store: Store) -> bytes:
    """The account as this device holds it (call inside a transaction)."""
    contacts = [
        {
            "username": c.username,
            "display_name": c.display_name,
            "identity_key": _b64(c.identity_key),
            "verified": c.verified,
            "identity_changed": c.identity_changed,
            "identity_unaccepted": c.identity_unaccepted,
            "accepted": c.accepted,
            "blocked": c.blocked,
        }
        for c in store.contacts.all()
    ]
    lists = []
    for contact in store.contacts.all():
        held = store.device_lists.get(contact.username)
        if held is not None:
            lists.append({"username": contact.username, "signed": _b64(held.signed)})
    groups = []
    for conversation in store.conversations.all():
        if conversation.kind == "direct" or conversation.group_id is None:
            continue
        change, parent = store.groups.state(conversation.group_id)
        groups.append(
            {
                "group_id": _b64(conversation.group_id),
                "title": conversation.title,
                "members": store.groups.members(conversation.group_id),
                "state_change": _b64(change),
                "parent_state": _b64(parent),
                "timer_seconds": conversation.timer_seconds,
            }
        )
    chats = [
        {"peer": c.peer, "timer_seconds": c.timer_seconds}
        for c in store.conversations.all()
        if c.kind == "direct" and c.peer is not None
    ]
    state = {
        "version": SYNC_STATE_VERSION,
        "contacts": contacts,
        "device_lists": lists,
        "groups": groups,
        "direct_chats": chats,
    }
    encoded = json.dumps(state, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(encoded) > MAX_SYNC_STATE:
        raise SyncStateError(
            "this account's contacts and groups are too many to link a device in one go"
        )
    return encoded


def import_sync_state(store: Store, data: bytes, *, now: int) -> None:
    """Takes `data` into this new device's store (call inside a transaction; the
    store holds no contacts or chats yet). Raises SyncStateError, changing
    nothing the transaction keeps, for anything malformed."""
    if len(data) > MAX_SYNC_STATE:
        raise SyncStateError("the sync state is too large")
    try:
        state = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SyncStateError("the sync state is not JSON") from None
    if not isinstance(state, dict) or state.get("version") != SYNC_STATE_VERSION:
        raise SyncStateError("the sync state is of an unknown version")
    try:
        for contact in _list(state, "contacts"):
            store.contacts.import_linked(
                str(contact["username"]),
                display_name=str(contact["display_name"]),
                identity_key=_unb64(contact["identity_key"]),
                verified=bool(contact["verified"]),
                identity_changed=bool(contact["identity_changed"]),
                identity_unaccepted=bool(contact["identity_unaccepted"]),
                accepted=bool(contact["accepted"]),
                blocked=bool(contact["blocked"]),
                now=now,
            )
        for held in _list(state, "device_lists"):
            _import_list(store, str(held["username"]), _unb64(held["signed"]), now)
        for chat in _list(state, "direct_chats"):
            conversation = store.conversations.direct(str(chat["peer"]), now=now)
            store.conversations.set_timer(conversation.id, int(chat["timer_seconds"]))
        for group in _list(state, "groups"):
            _import_group(store, group, now)
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, SyncStateError):
            raise
        raise SyncStateError("the sync state is missing a field or has a wrong one") from None


def _list(state: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = state.get(key)
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise SyncStateError(f"the sync state's {key} are malformed")
    return items


def _import_list(store: Store, username: str, signed: bytes | None, now: int) -> None:
    contact = store.contacts.get(username)
    if signed is None or contact is None or contact.identity_key is None:
        return
    try:
        version, account = declared(signed)
        open_device_list(signed, account)
    except DeviceListError:
        raise SyncStateError("a device list in the sync state does not verify") from None
    if account.to_bytes() == contact.identity_key:
        store.device_lists.save(username, contact.identity_key, version, signed, now=now)


def _import_group(store: Store, group: dict[str, Any], now: int) -> None:
    group_id = _unb64(group["group_id"])
    if not group_id:
        raise SyncStateError("a group in the sync state has no id")
    title = str(group["title"])
    members = [str(m) for m in group["members"]]
    conversation = store.conversations.create_group(group_id, title, now=now)
    store.groups.create(group_id, conversation.id, title)
    store.groups.set_members(group_id, members)
    change = _unb64(group["state_change"])
    if change is not None:
        store.groups.set_state(group_id, change, _unb64(group["parent_state"]), title)
    store.conversations.set_timer(conversation.id, int(group["timer_seconds"]))
