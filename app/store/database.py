"""The encrypted local store: one SQLCipher database per profile.

The database is opened with a raw 256-bit key (`x'…'`), so opening costs no
PBKDF; the key itself is random and lives only wrapped in `store.key` (see
`keyfile`). Every write that must stay consistent with another (a ratchet state
and the message it produced or consumed) goes through `transaction()`.
WAL with `synchronous=FULL`: a committed transaction survives an application
crash and a power cut, which matters because the relay deletes an envelope once
we acknowledge it — it must already be durable here by then.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlcipher3.dbapi2 as sqlcipher

from app.config import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, make_private_dir
from app.crypto import Rng, SystemRng
from app.store.durability import WritebackPacer, write_atomically
from app.store.early_changes import EarlyChangeRepository
from app.store.errors import StoreCorrupt, StoreError
from app.store.keyfile import KEY_FILE_NAME, KeyFile, Protector, new_db_key
from app.store.receiving import (
    HandledContentRepository,
    QuarantineRepository,
    SessionStartRepository,
)
from app.store.schema import MIGRATIONS
from app.store.trust import HeldSendRepository, IdentityTrust, TrustEvent, next_trust

DB_FILE_NAME = "store.db"
SCHEMA_VERSION = len(MIGRATIONS)
# The migration that brought contacts and message requests (schema.py, 9).
CONTACTS_SCHEMA = 9
GRANDFATHER_CONTACTS = (
    "INSERT INTO contacts (username, accepted, added_at)"
    " SELECT peer, 1, last_activity FROM conversations WHERE peer IS NOT NULL"
    " ON CONFLICT (username) DO NOTHING"
)
IMPORT_BATCH = 2000
IMAGE_PREFIX = ".backup-image-"
IMAGE_KEY_LENGTH = 32
# Database images are SQLCipher 4 databases whatever a later SQLCipher defaults to,
# so a backup made today opens with any later Cipherline. Their pages carry
# HMAC-SHA256 rather than SHA-512: the image lives only inside an authenticated
# backup stream and for moments beside the store, and SHA-256 has hardware support
# (copying 1M messages' worth of pages went from 1.28 s to about 1.0 s).
IMAGE_CIPHER_COMPATIBILITY = 4
IMAGE_STEP_PAGES = 4096
IMAGE_HMAC = "HMAC_SHA256"
# Archived sessions kept per contact device: each restore archives one more.
ARCHIVED_PER_DEVICE = 10
BACKUP_TABLES = (
    "settings",
    "account",
    "contacts",
    "identity_changes",
    "sessions",
    "conversations",
    "messages",
    "groups",
    "group_members",
    "attachments",
    "backup_state",
    "device_lists",
    "member_sender_keys",
)


def _split_statements(script: str) -> list[str]:
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlcipher.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


@dataclass(frozen=True)
class Account:
    username: str
    device_id: int
    device_name: str
    relay_token: str = field(repr=False)
    identity: bytes = field(repr=False)  # the private identity keys
    prekeys: bytes = field(repr=False)  # the private prekeys


@dataclass(frozen=True)
class Contact:
    username: str
    display_name: str
    identity_key: bytes | None
    verified: bool
    identity_changed: bool
    # Verified, then another identity key: nothing is encrypted to the contact until
    # the user accepts it (app/store/trust.py).
    identity_unaccepted: bool = False
    # A contact proper (docs/protocol.md, "Message requests and blocking"): not a
    # stranger whose chat is a request. Blocked: what they send is dropped.
    accepted: bool = False
    blocked: bool = False

    @property
    def trust(self) -> IdentityTrust:
        return IdentityTrust.of(self.verified, self.identity_changed, self.identity_unaccepted)


@dataclass(frozen=True)
class Conversation:
    id: int
    kind: str
    peer: str | None
    group_id: bytes | None
    title: str
    last_activity: int
    unread: int
    timer_seconds: int
    # A group a non-contact added the user to, not yet accepted (a direct chat's
    # request state is its peer's, `Contact.accepted`).
    request: bool = False


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    uuid: str
    sender: str
    outgoing: bool
    kind: str
    body: str = field(repr=False)
    sent_at: int
    received_at: int | None
    status: str
    expires_at: int | None
    quote_uuid: str | None = None
    quote_author: str | None = None
    quote_text: str | None = field(default=None, repr=False)
    reactions: str | None = field(default=None, repr=False)  # JSON, schema.py migration 8
    edited_at: int | None = None  # the shown edit's sent-at (schema.py, migration 11)


@dataclass(frozen=True)
class SearchHit:
    conversation_id: int
    message_id: int
    snippet: str = field(repr=False)
    position: int
    sent_at: int


@dataclass(frozen=True)
class Attachment:
    id: int
    message_id: int
    filename: str
    mime: str
    size: int
    blob_id: str | None
    key: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    local_path: str | None
    state: str
    caption: str = field(default="", repr=False)
    # Inside the encrypted store only (docs/protocol.md §5, type 11).
    thumbnail: bytes | None = field(default=None, repr=False)
    thumbnail_width: int = 0
    thumbnail_height: int = 0


@dataclass(frozen=True)
class OutboxItem:
    id: int
    client_id: str
    message_id: int | None
    recipient: str
    device_id: int
    body: bytes = field(repr=False)
    attempts: int
    created_at: int = 0


@dataclass(frozen=True)
class OutboxBackoff:
    """A recipient device whose items wait (app/services/delivery.py)."""

    recipient: str
    device_id: int
    not_before: int
    failures: int


@dataclass(frozen=True)
class Group:
    group_id: bytes
    conversation_id: int
    title: str
    own_sender_key: bytes | None = field(repr=False)  # holds the chain and signing keys
    epoch: int


@dataclass(frozen=True)
class BackupState:
    method: str | None
    folder: str | None
    schedule: str
    keep: int
    last_success: int | None
    last_size: int | None
    vault_record_id: str | None
    backup_key: bytes | None = None

    def __repr__(self) -> str:
        return f"BackupState(method={self.method!r}, folder={self.folder!r}, <key hidden>)"


_MESSAGE_COLUMNS = (
    "id, conversation_id, uuid, sender, outgoing, kind, body, sent_at, received_at,"
    " status, expires_at, quote_uuid, quote_author, quote_text, reactions, edited_at"
)


def _message(row: tuple[Any, ...]) -> Message:
    return Message(
        id=row[0],
        conversation_id=row[1],
        uuid=row[2],
        sender=row[3],
        outgoing=bool(row[4]),
        kind=row[5],
        body=row[6],
        sent_at=row[7],
        received_at=row[8],
        status=row[9],
        expires_at=row[10],
        quote_uuid=row[11],
        quote_author=row[12],
        quote_text=row[13],
        reactions=row[14],
        edited_at=row[15],
    )


class _Repository:
    def __init__(self, store: Store) -> None:
        self._store = store

    def _execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlcipher.Cursor:
        return self._store.execute(sql, params)


class AccountRepository(_Repository):
    def get(self) -> Account | None:
        row = self._execute(
            "SELECT username, device_id, device_name, relay_token, identity, prekeys"
            " FROM account WHERE id = 1"
        ).fetchone()
        return Account(*row) if row else None

    def save(self, account: Account, *, now: int) -> None:
        self._execute(
            "INSERT INTO account (id, username, device_id, device_name, relay_token, identity,"
            " prekeys, created_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET username = excluded.username,"
            " device_id = excluded.device_id, device_name = excluded.device_name,"
            " relay_token = excluded.relay_token, identity = excluded.identity,"
            " prekeys = excluded.prekeys",
            (
                account.username,
                account.device_id,
                account.device_name,
                account.relay_token,
                account.identity,
                account.prekeys,
                now,
            ),
        )

    def set_prekeys(self, prekeys: bytes) -> None:
        self._execute("UPDATE account SET prekeys = ? WHERE id = 1", (prekeys,))

    def account_identity(self) -> bytes | None:
        """The account identity's private keys on a linked device; None where this
        device's own identity is the account identity (docs/protocol.md §13)."""
        row = self._execute("SELECT account_identity FROM account WHERE id = 1").fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def set_account_identity(self, identity: bytes | None) -> None:
        self._execute("UPDATE account SET account_identity = ? WHERE id = 1", (identity,))


@dataclass(frozen=True)
class HeldDeviceList:
    account_key: bytes = field(repr=False)  # the account identity it was opened under
    version: int
    signed: bytes = field(repr=False)


class DeviceListRepository(_Repository):
    """The newest signed device list held for each account, ours included: what
    a message to that account is encrypted to (app/protocol/device_list.py)."""

    def get(self, username: str) -> HeldDeviceList | None:
        row = self._execute(
            "SELECT account_key, version, signed FROM device_lists WHERE username = ?",
            (username,),
        ).fetchone()
        return None if row is None else HeldDeviceList(bytes(row[0]), int(row[1]), bytes(row[2]))

    def save(
        self, username: str, account_key: bytes, version: int, signed: bytes, *, now: int
    ) -> None:
        self._execute(
            "INSERT INTO device_lists (username, account_key, version, signed, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (username) DO UPDATE SET"
            " account_key = excluded.account_key, version = excluded.version,"
            " signed = excluded.signed, updated_at = excluded.updated_at",
            (username, account_key, version, signed, now),
        )

    def delete(self, username: str) -> None:
        self._execute("DELETE FROM device_lists WHERE username = ?", (username,))


class ContactRepository(_Repository):
    """Contacts and how far their identity keys are trusted: every change of trust
    is a transition of `app/store/trust.py`."""

    _COLUMNS = (
        "SELECT username, display_name, identity_key, verified, identity_changed,"
        " identity_unaccepted, accepted, blocked FROM contacts"
    )

    @staticmethod
    def _contact(row: Any) -> Contact:
        return Contact(
            row[0],
            row[1],
            row[2],
            bool(row[3]),
            bool(row[4]),
            bool(row[5]),
            bool(row[6]),
            bool(row[7]),
        )

    def accepted(self) -> list[Contact]:
        """The contacts proper, by name: what the new-chat and group pickers offer."""
        rows = self._execute(
            self._COLUMNS + " WHERE accepted = 1 AND blocked = 0 ORDER BY username"
        ).fetchall()
        return [self._contact(r) for r in rows]

    def blocked(self) -> list[str]:
        rows = self._execute(
            "SELECT username FROM contacts WHERE blocked = 1 ORDER BY username"
        ).fetchall()
        return [str(r[0]) for r in rows]

    def is_blocked(self, username: str) -> bool:
        row = self._execute(
            "SELECT 1 FROM contacts WHERE username = ? AND blocked = 1", (username,)
        ).fetchone()
        return row is not None

    def accept(self, username: str, *, now: int) -> bool:
        """Makes `username` a contact (a row without a key yet if we hold none);
        True when they were not one."""
        before = self.get(username)
        self._execute(
            "INSERT INTO contacts (username, accepted, added_at) VALUES (?, 1, ?)"
            " ON CONFLICT (username) DO UPDATE SET accepted = 1",
            (username, now),
        )
        return before is None or not before.accepted

    def set_blocked(self, username: str, blocked: bool, *, now: int) -> None:
        self._execute(
            "INSERT INTO contacts (username, blocked, added_at) VALUES (?, ?, ?)"
            " ON CONFLICT (username) DO UPDATE SET blocked = excluded.blocked",
            (username, int(blocked), now),
        )

    def get(self, username: str) -> Contact | None:
        row = self._execute(self._COLUMNS + " WHERE username = ?", (username,)).fetchone()
        return None if row is None else self._contact(row)

    def all(self) -> list[Contact]:
        rows = self._execute(self._COLUMNS + " ORDER BY username").fetchall()
        return [self._contact(r) for r in rows]

    def unaccepted(self, usernames: Iterable[str]) -> list[str]:
        """Those of `usernames` in `UNACCEPTED`: nothing may be encrypted to them."""
        names = sorted(set(usernames))
        if not names:
            return []
        marks = ", ".join("?" * len(names))
        rows = self._execute(
            f"SELECT username FROM contacts WHERE identity_unaccepted = 1"  # noqa: S608
            f" AND username IN ({marks}) ORDER BY username",
            tuple(names),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def _apply(self, contact: Contact, event: TrustEvent, *, now: int) -> None:
        before = contact.trust
        after = next_trust(before, event)
        if after == before:
            return
        verified, changed, unaccepted = after.columns
        self._execute(
            "UPDATE contacts SET verified = ?, verified_at = ?, identity_changed = ?,"
            " identity_unaccepted = ? WHERE username = ?",
            (verified, now if verified else None, changed, unaccepted, contact.username),
        )

    def observe_identity(self, username: str, identity_key: bytes, *, now: int) -> bool:
        """Record the key seen for a contact; True when it differs from the one we had.

        A change clears verification and is kept in the history, so the UI can warn;
        a contact that was verified becomes `UNACCEPTED` (sending blocked).
        """
        existing = self.get(username)
        if existing is None:
            self._execute(
                "INSERT INTO contacts (username, identity_key, added_at) VALUES (?, ?, ?)",
                (username, identity_key, now),
            )
            return False
        if existing.identity_key is None:
            self._execute(
                "UPDATE contacts SET identity_key = ? WHERE username = ?", (identity_key, username)
            )
            return False
        if existing.identity_key == identity_key:
            return False
        self._execute(
            "INSERT INTO identity_changes (username, old_key, new_key, changed_at)"
            " VALUES (?, ?, ?, ?)",
            (username, existing.identity_key, identity_key, now),
        )
        self._execute(
            "UPDATE contacts SET identity_key = ? WHERE username = ?", (identity_key, username)
        )
        self._apply(existing, TrustEvent.KEY_CHANGED, now=now)
        return True

    def import_linked(
        self,
        username: str,
        *,
        display_name: str,
        identity_key: bytes | None,
        verified: bool,
        identity_changed: bool,
        identity_unaccepted: bool,
        accepted: bool,
        blocked: bool,
        now: int,
    ) -> None:
        """A contact as another device of the account holds it, trust included
        (a device being linked takes the account's contacts: app/services/link_state.py)."""
        self._execute(
            "INSERT INTO contacts (username, display_name, identity_key, verified, verified_at,"
            " identity_changed, identity_unaccepted, accepted, blocked, added_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                username,
                display_name,
                identity_key,
                int(verified),
                now if verified else None,
                int(identity_changed),
                int(identity_unaccepted),
                int(accepted),
                int(blocked),
                now,
            ),
        )

    def set_verified(self, username: str, verified: bool, *, now: int) -> None:
        contact = self.get(username)
        if contact is not None:
            self._apply(contact, TrustEvent.VERIFY if verified else TrustEvent.UNVERIFY, now=now)

    def acknowledge_change(self, username: str) -> None:
        """The warning's "Dismiss": ends `CHANGED`, never `UNACCEPTED`."""
        contact = self.get(username)
        if contact is not None:
            self._apply(contact, TrustEvent.DISMISS, now=0)

    def accept_identity(self, username: str, *, verified: bool, now: int) -> bool:
        """The "Accept new safety number" action (with `verified`, also "mark as verified"):
        ends `UNACCEPTED` or `CHANGED`. True when the contact was `UNACCEPTED`."""
        contact = self.get(username)
        if contact is None:
            return False
        self._apply(contact, TrustEvent.ACCEPT, now=now)
        if verified:
            accepted = self.get(username)
            assert accepted is not None
            self._apply(accepted, TrustEvent.VERIFY, now=now)
        return contact.trust == IdentityTrust.UNACCEPTED

    def identity_history(self, username: str) -> list[tuple[bytes | None, bytes, int]]:
        rows = self._execute(
            "SELECT old_key, new_key, changed_at FROM identity_changes WHERE username = ?"
            " ORDER BY id",
            (username,),
        ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]


class SessionRepository(_Repository):
    def get(self, username: str, device_id: int) -> bytes | None:
        row = self._execute(
            "SELECT state FROM sessions WHERE username = ? AND device_id = ?",
            (username, device_id),
        ).fetchone()
        return bytes(row[0]) if row else None

    def devices(self, username: str) -> list[int]:
        rows = self._execute(
            "SELECT device_id FROM sessions WHERE username = ? ORDER BY device_id", (username,)
        ).fetchall()
        return [r[0] for r in rows]

    def save(self, username: str, device_id: int, state: bytes, *, now: int) -> None:
        self._execute(
            "INSERT INTO sessions (username, device_id, state, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (username, device_id) DO UPDATE SET state = excluded.state,"
            " updated_at = excluded.updated_at",
            (username, device_id, state, now),
        )

    def delete(self, username: str, device_id: int | None = None) -> None:
        if device_id is None:
            self._execute("DELETE FROM sessions WHERE username = ?", (username,))
        else:
            self._execute(
                "DELETE FROM sessions WHERE username = ? AND device_id = ?", (username, device_id)
            )

    def delete_archived(self, username: str, device_id: int) -> None:
        self._execute(
            "DELETE FROM archived_sessions WHERE username = ? AND device_id = ?",
            (username, device_id),
        )

    def all(self) -> list[tuple[str, int, bytes]]:
        """Every live session as (username, device id, state)."""
        rows = self._execute(
            "SELECT username, device_id, state FROM sessions ORDER BY username, device_id"
        ).fetchall()
        return [(r[0], r[1], bytes(r[2])) for r in rows]

    # Archived sessions (docs/protocol.md, "Restore") open late messages of a session
    # a restore retired and never encrypt: `get`/`devices`, which sending reads, never
    # see them, and their states hold no sending chain (the caller retires them).
    def archive(self, username: str, device_id: int, retired: bytes, *, now: int) -> None:
        """Moves a live session to the archive as `retired`: the decrypt-only state a
        restore makes of it, or the whole state of one a crossing session start
        replaced; keeps the newest `ARCHIVED_PER_DEVICE` per device."""
        self.delete(username, device_id)
        self._execute(
            "INSERT INTO archived_sessions (username, device_id, state, archived_at)"
            " VALUES (?, ?, ?, ?)",
            (username, device_id, retired, now),
        )
        self._execute(
            "DELETE FROM archived_sessions WHERE username = ? AND device_id = ? AND id NOT IN"
            " (SELECT id FROM archived_sessions WHERE username = ? AND device_id = ?"
            " ORDER BY id DESC LIMIT ?)",
            (username, device_id, username, device_id, ARCHIVED_PER_DEVICE),
        )

    def archived(self, username: str, device_id: int) -> list[tuple[int, bytes]]:
        """(archive id, decrypt-only state) of a device's archived sessions, newest first."""
        rows = self._execute(
            "SELECT id, state FROM archived_sessions WHERE username = ? AND device_id = ?"
            " ORDER BY id DESC",
            (username, device_id),
        ).fetchall()
        return [(r[0], bytes(r[1])) for r in rows]

    def archived_rows(self) -> list[tuple[int, bytes]]:
        """(archive id, state) of every archived session."""
        rows = self._execute("SELECT id, state FROM archived_sessions ORDER BY id").fetchall()
        return [(r[0], bytes(r[1])) for r in rows]

    def all_archived(self) -> list[tuple[str, int, bytes]]:
        rows = self._execute(
            "SELECT username, device_id, state FROM archived_sessions ORDER BY id"
        ).fetchall()
        return [(r[0], r[1], bytes(r[2])) for r in rows]

    def remove_archived(self, archive_id: int) -> None:
        self._execute("DELETE FROM archived_sessions WHERE id = ?", (archive_id,))

    def update_archived(self, archive_id: int, retired: bytes) -> None:
        """After an archived session opened a message; `retired` is decrypt-only again."""
        self._execute("UPDATE archived_sessions SET state = ? WHERE id = ?", (retired, archive_id))

    def owe_restore_notice(self, username: str, *, now: int) -> None:
        self._execute(
            "INSERT INTO restore_notices (username, restored_at) VALUES (?, ?)"
            " ON CONFLICT (username) DO NOTHING",
            (username, now),
        )

    def restore_notice_due(self, username: str) -> bool:
        row = self._execute(
            "SELECT 1 FROM restore_notices WHERE username = ?", (username,)
        ).fetchone()
        return row is not None

    def owed_restore_notices(self) -> list[str]:
        rows = self._execute("SELECT username FROM restore_notices ORDER BY username").fetchall()
        return [str(r[0]) for r in rows]

    def restore_notice_sent(self, username: str) -> None:
        self._execute("DELETE FROM restore_notices WHERE username = ?", (username,))


_CONVERSATION_COLUMNS = (
    "id, kind, peer, group_id, title, last_activity, unread, timer_seconds, request"
)


def _conversation(row: tuple[Any, ...]) -> Conversation:
    return Conversation(
        id=row[0],
        kind=row[1],
        peer=row[2],
        group_id=row[3],
        title=row[4],
        last_activity=row[5],
        unread=row[6],
        timer_seconds=row[7],
        request=bool(row[8]),
    )


class ConversationRepository(_Repository):
    def _one(self, where: str, params: tuple[Any, ...]) -> Conversation | None:
        row = self._execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE {where}",  # noqa: S608
            params,
        ).fetchone()
        return _conversation(row) if row else None

    def get(self, conversation_id: int) -> Conversation | None:
        return self._one("id = ?", (conversation_id,))

    def by_peer(self, peer: str) -> Conversation | None:
        return self._one("peer = ?", (peer,))

    def by_group(self, group_id: bytes) -> Conversation | None:
        return self._one("group_id = ?", (group_id,))

    def direct(self, peer: str, *, now: int) -> Conversation:
        existing = self.by_peer(peer)
        if existing is not None:
            return existing
        self._execute(
            "INSERT INTO conversations (kind, peer, title, last_activity)"
            " VALUES ('direct', ?, ?, ?)",
            (peer, peer, now),
        )
        created = self.by_peer(peer)
        assert created is not None
        return created

    def create_group(self, group_id: bytes, title: str, *, now: int) -> Conversation:
        self._execute(
            "INSERT INTO conversations (kind, group_id, title, last_activity)"
            " VALUES ('group', ?, ?, ?)",
            (group_id, title, now),
        )
        created = self.by_group(group_id)
        assert created is not None
        return created

    def all(self) -> list[Conversation]:
        rows = self._execute(
            f"SELECT {_CONVERSATION_COLUMNS} FROM conversations WHERE archived = 0"  # noqa: S608
            " ORDER BY last_activity DESC, id DESC"
        ).fetchall()
        return [_conversation(row) for row in rows]

    def touch(self, conversation_id: int, at: int, *, unread_delta: int = 0) -> None:
        self._execute(
            "UPDATE conversations SET last_activity = MAX(last_activity, ?),"
            " unread = unread + ? WHERE id = ?",
            (at, unread_delta, conversation_id),
        )

    def mark_read(self, conversation_id: int) -> None:
        self._execute("UPDATE conversations SET unread = 0 WHERE id = ?", (conversation_id,))

    def set_unread(self, conversation_id: int, count: int) -> None:
        self._execute("UPDATE conversations SET unread = ? WHERE id = ?", (count, conversation_id))

    def set_timer(self, conversation_id: int, seconds: int) -> None:
        self._execute(
            "UPDATE conversations SET timer_seconds = ? WHERE id = ?", (seconds, conversation_id)
        )

    def rename(self, conversation_id: int, title: str) -> None:
        self._execute("UPDATE conversations SET title = ? WHERE id = ?", (title, conversation_id))

    def set_request(self, conversation_id: int, request: bool) -> None:
        self._execute(
            "UPDATE conversations SET request = ? WHERE id = ?", (int(request), conversation_id)
        )

    def delete(self, conversation_id: int) -> list[str]:
        """Deletes the chat with its messages, attachments and group rows (the
        foreign keys cascade); returns the attachments' local file names, for the
        caller to remove."""
        rows = self._execute(
            "SELECT a.local_path FROM attachments a JOIN messages m ON m.id = a.message_id"
            " WHERE m.conversation_id = ? AND a.local_path IS NOT NULL",
            (conversation_id,),
        ).fetchall()
        self._execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        return [str(r[0]) for r in rows]


class MessageRepository(_Repository):
    def add(
        self,
        *,
        conversation_id: int,
        uuid: str,
        sender: str,
        outgoing: bool,
        body: str,
        sent_at: int,
        status: str,
        kind: str = "text",
        received_at: int | None = None,
        expires_at: int | None = None,
        quote: tuple[str, str, str] | None = None,
    ) -> Message:
        """`quote`: (message uuid, author, snippet) of the message this one answers."""
        quote_uuid, quote_author, quote_text = quote if quote is not None else (None, None, None)
        cursor = self._execute(
            "INSERT INTO messages (conversation_id, uuid, sender, outgoing, kind, body, sent_at,"
            " received_at, status, expires_at, quote_uuid, quote_author, quote_text)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conversation_id,
                uuid,
                sender,
                int(outgoing),
                kind,
                body,
                sent_at,
                received_at,
                status,
                expires_at,
                quote_uuid,
                quote_author,
                quote_text,
            ),
        )
        message_id = cursor.lastrowid
        assert message_id is not None
        return Message(
            message_id,
            conversation_id,
            uuid,
            sender,
            outgoing,
            kind,
            body,
            sent_at,
            received_at,
            status,
            expires_at,
            quote_uuid,
            quote_author,
            quote_text,
        )

    def add_many(self, rows: Iterable[tuple[int, str, str, bool, str, int, str]]) -> None:
        """Bulk insert (conversation, uuid, sender, outgoing, body, sent_at, status)."""
        self._store.executemany(
            "INSERT INTO messages (conversation_id, uuid, sender, outgoing, body, sent_at, status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            ((c, u, s, int(o), b, t, st) for c, u, s, o, b, t, st in rows),
        )

    def get(self, message_id: int) -> Message | None:
        row = self._execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?",  # noqa: S608
            (message_id,),
        ).fetchone()
        return _message(row) if row else None

    def by_uuid(self, uuid: str) -> Message | None:
        row = self._execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE uuid = ?",  # noqa: S608
            (uuid,),
        ).fetchone()
        return _message(row) if row else None

    def newest(self, conversation_id: int, limit: int = 50) -> list[Message]:
        rows = self._execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"  # noqa: S608
            " ORDER BY sent_at DESC, id DESC LIMIT ?",
            (conversation_id, limit),
        ).fetchall()
        return [_message(row) for row in reversed(rows)]

    def before(self, conversation_id: int, message_id: int, limit: int = 50) -> list[Message]:
        anchor = self.get(message_id)
        if anchor is None:
            return []
        rows = self._execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"  # noqa: S608
            " AND (sent_at, id) < (?, ?) ORDER BY sent_at DESC, id DESC LIMIT ?",
            (conversation_id, anchor.sent_at, anchor.id, limit),
        ).fetchall()
        return [_message(row) for row in reversed(rows)]

    def after(self, conversation_id: int, message_id: int, limit: int = 50) -> list[Message]:
        anchor = self.get(message_id)
        if anchor is None:
            return []
        rows = self._execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?"  # noqa: S608
            " AND (sent_at, id) > (?, ?) ORDER BY sent_at, id LIMIT ?",
            (conversation_id, anchor.sent_at, anchor.id, limit),
        ).fetchall()
        return [_message(row) for row in rows]

    def around(self, conversation_id: int, message_id: int, limit: int = 50) -> list[Message]:
        anchor = self.get(message_id)
        if anchor is None or anchor.conversation_id != conversation_id:
            return self.newest(conversation_id, limit)
        half = limit // 2
        older = self.before(conversation_id, message_id, half)
        newer = self.after(conversation_id, message_id, limit - half - 1)
        return [*older, anchor, *newer]

    def count(self, conversation_id: int) -> int:
        row = self._execute(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
        return int(row[0])

    def position(self, message_id: int) -> int:
        """0-based index of the message in its conversation, oldest first."""
        anchor = self.get(message_id)
        if anchor is None:
            return -1
        row = self._execute(
            "SELECT COUNT(*) FROM messages WHERE conversation_id = ? AND (sent_at, id) < (?, ?)",
            (anchor.conversation_id, anchor.sent_at, anchor.id),
        ).fetchone()
        return int(row[0])

    def last(self, conversation_id: int) -> Message | None:
        newest = self.newest(conversation_id, 1)
        return newest[0] if newest else None

    def set_status(self, message_id: int, status: str) -> None:
        self._execute("UPDATE messages SET status = ? WHERE id = ?", (status, message_id))

    def advance_status(self, uuid: str, status: str) -> Message | None:
        """Move an outgoing message forward (sent → delivered → read), never back."""
        order = ["sending", "failed", "sent", "delivered", "read"]
        message = self.by_uuid(uuid)
        if message is None or not message.outgoing:
            return None
        if status in order and order.index(status) > order.index(message.status):
            self.set_status(message.id, status)
            return self.get(message.id)
        return None

    def search(self, query: str, limit: int = 50) -> list[SearchHit]:
        tokens = [token for token in query.replace('"', " ").split() if token]
        if not tokens:
            return []
        # Each word becomes a quoted prefix term: user text can never be FTS syntax.
        match = " ".join(f'"{token}"*' for token in tokens)
        rows = self._execute(
            "SELECT m.conversation_id, m.id, snippet(messages_fts, 0, '[', ']', '…', 10),"
            " m.sent_at FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
            " WHERE messages_fts MATCH ? ORDER BY rank LIMIT ?",
            (match, limit),
        ).fetchall()
        return [SearchHit(r[0], r[1], r[2], self.position(r[1]), r[3]) for r in rows]

    def delete_expired(self, now: int) -> list[tuple[int, int]]:
        rows = self._execute(
            "SELECT id, conversation_id FROM messages WHERE expires_at IS NOT NULL"
            " AND expires_at <= ?",
            (now,),
        ).fetchall()
        self._execute(
            "DELETE FROM messages WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
        )
        return [(r[0], r[1]) for r in rows]

    def set_expiry(self, message_id: int, expires_at: int) -> None:
        self._execute("UPDATE messages SET expires_at = ? WHERE id = ?", (expires_at, message_id))

    def set_reactions(self, message_id: int, reactions: str | None) -> None:
        self._execute("UPDATE messages SET reactions = ? WHERE id = ?", (reactions, message_id))

    def delete(self, message_id: int) -> list[str]:
        """Deletes one message (with its attachment row); returns the attachment's
        local file name, if any, for the caller to remove."""
        files = self._attachment_files(message_id)
        self._execute("DELETE FROM messages WHERE id = ?", (message_id,))
        return files

    def tombstone(self, message_id: int) -> list[str]:
        """Deleted for everyone: the row stays (the bubble says it was deleted) but
        its text, quote, reactions and attachment (with its key) are gone, and so is
        the snippet of it that replies in its chat quote. Returns the attachment's
        local file name, if any, for the caller to remove."""
        message = self.get(message_id)
        if message is None:
            return []
        files = self._attachment_files(message_id)
        self._execute("DELETE FROM attachments WHERE message_id = ?", (message_id,))
        self._execute(
            "UPDATE messages SET kind = 'deleted', body = '', quote_uuid = NULL,"
            " quote_author = NULL, quote_text = NULL, reactions = NULL, edited_at = NULL"
            " WHERE id = ?",
            (message_id,),
        )
        self._execute(
            "UPDATE messages SET quote_text = '' WHERE quote_uuid = ? AND conversation_id = ?",
            (message.uuid, message.conversation_id),
        )
        return files

    def edit(self, message_id: int, body: str, edited_at: int, snippet: str) -> None:
        """Replaces the text (the old one is not kept, nor in the quotes of it:
        replies in its chat quote `snippet` instead)."""
        message = self.get(message_id)
        if message is None:
            return
        self._execute(
            "UPDATE messages SET body = ?, edited_at = ? WHERE id = ?",
            (body, edited_at, message_id),
        )
        self._execute(
            "UPDATE messages SET quote_text = ? WHERE quote_uuid = ? AND conversation_id = ?",
            (snippet, message.uuid, message.conversation_id),
        )

    def _attachment_files(self, message_id: int) -> list[str]:
        rows = self._execute(
            "SELECT local_path FROM attachments WHERE message_id = ? AND local_path IS NOT NULL",
            (message_id,),
        ).fetchall()
        return [str(r[0]) for r in rows]


class AttachmentRepository(_Repository):
    _COLUMNS = (
        "id, message_id, filename, mime, size, blob_id, key, digest, local_path, state,"
        " caption, thumbnail, thumbnail_width, thumbnail_height"
    )

    def add(
        self,
        *,
        message_id: int,
        filename: str,
        mime: str,
        size: int,
        key: bytes,
        digest: bytes,
        blob_id: str | None,
        local_path: str | None,
        state: str,
        caption: str = "",
        thumbnail: bytes | None = None,
        thumbnail_width: int = 0,
        thumbnail_height: int = 0,
    ) -> Attachment:
        # The columns in Attachment's field order after its id: one tuple for both.
        row = (
            message_id,
            filename,
            mime,
            size,
            blob_id,
            key,
            digest,
            local_path,
            state,
            caption,
            thumbnail or None,
            thumbnail_width,
            thumbnail_height,
        )
        cursor = self._execute(
            "INSERT INTO attachments (message_id, filename, mime, size, blob_id, key, digest,"
            " local_path, state, caption, thumbnail, thumbnail_width, thumbnail_height)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        attachment_id = cursor.lastrowid
        assert attachment_id is not None
        return Attachment(attachment_id, *row)

    def get(self, attachment_id: int) -> Attachment | None:
        row = self._execute(
            f"SELECT {self._COLUMNS} FROM attachments WHERE id = ?",  # noqa: S608
            (attachment_id,),
        ).fetchone()
        return Attachment(*row) if row else None

    def for_message(self, message_id: int) -> Attachment | None:
        row = self._execute(
            f"SELECT {self._COLUMNS} FROM attachments WHERE message_id = ?",  # noqa: S608
            (message_id,),
        ).fetchone()
        return Attachment(*row) if row else None

    def update(
        self,
        attachment_id: int,
        *,
        state: str,
        blob_id: str | None = None,
        local_path: str | None = None,
    ) -> None:
        self._execute(
            "UPDATE attachments SET state = ?, blob_id = COALESCE(?, blob_id),"
            " local_path = COALESCE(?, local_path) WHERE id = ?",
            (state, blob_id, local_path, attachment_id),
        )

    def pending_downloads(self) -> list[Attachment]:
        rows = self._execute(
            f"SELECT {self._COLUMNS} FROM attachments WHERE state = 'pending'"  # noqa: S608
        ).fetchall()
        return [Attachment(*row) for row in rows]


class OutboxRepository(_Repository):
    def add(
        self,
        client_id: str,
        message_id: int | None,
        recipient: str,
        device_id: int,
        body: bytes,
        *,
        now: int,
    ) -> None:
        self._execute(
            "INSERT INTO outbox (client_id, message_id, recipient, device_id, body, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (client_id, message_id, recipient, device_id, body, now),
        )

    _COLUMNS = "id, client_id, message_id, recipient, device_id, body, attempts, created_at"

    @staticmethod
    def _item(row: tuple[Any, ...]) -> OutboxItem:
        return OutboxItem(row[0], row[1], row[2], row[3], row[4], bytes(row[5]), row[6], row[7])

    def holds_for(self, recipient: str, device_id: int) -> bool:
        """Whether anything waits for that device (sent or not yet)."""
        row = self._execute(
            "SELECT 1 FROM outbox WHERE recipient = ? AND device_id = ? LIMIT 1",
            (recipient, device_id),
        ).fetchone()
        return row is not None

    def pending(self, limit: int = 100) -> list[OutboxItem]:
        """Every item, waiting or not, oldest first."""
        rows = self._execute(
            f"SELECT {self._COLUMNS} FROM outbox ORDER BY id LIMIT ?",  # noqa: S608
            (limit,),
        ).fetchall()
        return [self._item(r) for r in rows]

    def due(self, now: int, limit: int = 100) -> list[OutboxItem]:
        """The items to send now, oldest first: all but those for a device that
        waits until after `now` (`defer`)."""
        rows = self._execute(
            f"SELECT {self._COLUMNS} FROM outbox AS o WHERE NOT EXISTS"  # noqa: S608
            " (SELECT 1 FROM outbox_backoff AS b WHERE b.recipient = o.recipient"
            " AND b.device_id = o.device_id AND b.not_before > ?)"
            " ORDER BY id LIMIT ?",
            (now, limit),
        ).fetchall()
        return [self._item(r) for r in rows]

    def items(self, client_ids: Iterable[str]) -> list[OutboxItem]:
        found: list[OutboxItem] = []
        for client_id in client_ids:
            row = self._execute(
                f"SELECT {self._COLUMNS} FROM outbox WHERE client_id = ?",  # noqa: S608
                (client_id,),
            ).fetchone()
            if row is not None:
                found.append(self._item(row))
        return found

    def remove(self, client_ids: Iterable[str]) -> None:
        self._store.executemany(
            "DELETE FROM outbox WHERE client_id = ?", ((cid,) for cid in client_ids)
        )

    def backoff(self, recipient: str, device_id: int) -> OutboxBackoff | None:
        row = self._execute(
            "SELECT recipient, device_id, not_before, failures FROM outbox_backoff"
            " WHERE recipient = ? AND device_id = ?",
            (recipient, device_id),
        ).fetchone()
        return OutboxBackoff(row[0], row[1], row[2], row[3]) if row else None

    def defer(self, recipient: str, device_id: int, *, not_before: int, failures: int) -> None:
        """Holds every item for this device, queued now or later, until `not_before`."""
        self._execute(
            "INSERT INTO outbox_backoff (recipient, device_id, not_before, failures)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (recipient, device_id)"
            " DO UPDATE SET not_before = excluded.not_before, failures = excluded.failures",
            (recipient, device_id, not_before, failures),
        )

    def clear_backoff(self, devices: Iterable[tuple[str, int]]) -> None:
        self._store.executemany(
            "DELETE FROM outbox_backoff WHERE recipient = ? AND device_id = ?", devices
        )

    def mark_partly_sent(self, message_id: int) -> None:
        self._execute("INSERT OR IGNORE INTO partly_sent (message_id) VALUES (?)", (message_id,))

    def take_partly_sent(self, message_id: int) -> bool:
        """Whether some copy of the message was accepted; forgets it (its last copy
        has left the outbox)."""
        return bool(
            self._execute("DELETE FROM partly_sent WHERE message_id = ?", (message_id,)).rowcount
        )

    def count_for_message(self, message_id: int) -> int:
        row = self._execute(
            "SELECT COUNT(*) FROM outbox WHERE message_id = ?", (message_id,)
        ).fetchone()
        return int(row[0])

    def bump_attempts(self, client_ids: Iterable[str]) -> None:
        self._store.executemany(
            "UPDATE outbox SET attempts = attempts + 1 WHERE client_id = ?",
            ((cid,) for cid in client_ids),
        )


class GroupRepository(_Repository):
    def get(self, group_id: bytes) -> Group | None:
        row = self._execute(
            "SELECT group_id, conversation_id, title, own_sender_key, epoch FROM groups"
            " WHERE group_id = ?",
            (group_id,),
        ).fetchone()
        return Group(bytes(row[0]), row[1], row[2], row[3], row[4]) if row else None

    def by_conversation(self, conversation_id: int) -> Group | None:
        row = self._execute(
            "SELECT group_id FROM groups WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
        return self.get(bytes(row[0])) if row else None

    def create(self, group_id: bytes, conversation_id: int, title: str) -> None:
        self._execute(
            "INSERT INTO groups (group_id, conversation_id, title) VALUES (?, ?, ?)",
            (group_id, conversation_id, title),
        )

    def state(self, group_id: bytes) -> tuple[bytes | None, bytes | None]:
        """(the signed change that made the held state, the state before it)."""
        row = self._execute(
            "SELECT state_change, parent_state FROM groups WHERE group_id = ?", (group_id,)
        ).fetchone()
        if row is None:
            return None, None
        return (bytes(row[0]) if row[0] else None), (bytes(row[1]) if row[1] else None)

    def set_state(self, group_id: bytes, change: bytes, parent: bytes | None, title: str) -> None:
        self._execute(
            "UPDATE groups SET state_change = ?, parent_state = ?, title = ? WHERE group_id = ?",
            (change, parent, title, group_id),
        )

    def set_own_sender_key(self, group_id: bytes, state: bytes | None, epoch: int) -> None:
        self._execute(
            "UPDATE groups SET own_sender_key = ?, epoch = ? WHERE group_id = ?",
            (state, epoch, group_id),
        )

    def drop_own_sender_keys(self) -> int:
        """Forgets this device's own chain in every group (a restore: the backup's
        chains may have been used past it, docs/protocol.md, "Restore"); the next
        group message makes a fresh chain and distributes it. Own chains open
        nothing (our own group messages never come back), so none is archived.
        Members' chains stay: they only decrypt. Returns how many were dropped."""
        cursor = self._execute(
            "UPDATE groups SET own_sender_key = NULL WHERE own_sender_key IS NOT NULL"
        )
        return int(cursor.rowcount)

    def members(self, group_id: bytes) -> list[str]:
        rows = self._execute(
            "SELECT username FROM group_members WHERE group_id = ? ORDER BY username", (group_id,)
        ).fetchall()
        return [r[0] for r in rows]

    def set_members(self, group_id: bytes, members: Iterable[str]) -> None:
        wanted = set(members)
        current = set(self.members(group_id))
        for gone in current - wanted:
            self._execute(
                "DELETE FROM group_members WHERE group_id = ? AND username = ?", (group_id, gone)
            )
        for new in wanted - current:
            self._execute(
                "INSERT INTO group_members (group_id, username) VALUES (?, ?)", (group_id, new)
            )

    def member_sender_key(self, group_id: bytes, username: str, device_id: int) -> bytes | None:
        row = self._execute(
            "SELECT state FROM member_sender_keys"
            " WHERE group_id = ? AND username = ? AND device_id = ?",
            (group_id, username, device_id),
        ).fetchone()
        if row is not None:
            return bytes(row[0])
        # A chain received before chains were kept per device.
        row = self._execute(
            "SELECT sender_key FROM group_members WHERE group_id = ? AND username = ?",
            (group_id, username),
        ).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def set_member_sender_key(
        self, group_id: bytes, username: str, device_id: int, state: bytes
    ) -> None:
        if not self._execute(
            "SELECT 1 FROM group_members WHERE group_id = ? AND username = ?",
            (group_id, username),
        ).fetchone():
            return
        self._execute(
            "INSERT INTO member_sender_keys (group_id, username, device_id, state)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (group_id, username, device_id)"
            " DO UPDATE SET state = excluded.state",
            (group_id, username, device_id, state),
        )

    def forget_member_sender_keys(self, group_id: bytes, username: str) -> None:
        """Every chain of a member (removed from the group, or one of whose devices
        was removed from their account)."""
        self._execute(
            "DELETE FROM member_sender_keys WHERE group_id = ? AND username = ?",
            (group_id, username),
        )
        self._execute(
            "UPDATE group_members SET sender_key = NULL WHERE group_id = ? AND username = ?",
            (group_id, username),
        )

    def forget_device_sender_keys(self, username: str, device_id: int) -> None:
        """The chains of one device of `username`, in every group."""
        self._execute(
            "DELETE FROM member_sender_keys WHERE username = ? AND device_id = ?",
            (username, device_id),
        )

    def shared_with(self, username: str) -> list[bytes]:
        """The groups `username` is a member of."""
        rows = self._execute(
            "SELECT group_id FROM group_members WHERE username = ? ORDER BY group_id",
            (username,),
        ).fetchall()
        return [bytes(r[0]) for r in rows]


# A profile restored from a backup and not yet settled as a device of its own
# (app/services/account.py, `settle_restored_device`): what the user chose.
RESTORED_DEVICE_SETTING = "device.restored"
RESTORED_ADD = "add"  # a new device of the account; the original keeps working
RESTORED_TAKE_OVER = "take_over"  # takes the original's place; it is signed out


class SettingsRepository(_Repository):
    def get(self, key: str, default: Any = None) -> Any:
        row = self._execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value: Any) -> None:
        self._execute(
            "INSERT INTO settings (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, json.dumps(value)),
        )

    def delete(self, key: str) -> None:
        self._execute("DELETE FROM settings WHERE key = ?", (key,))


class BackupStateRepository(_Repository):
    def get(self) -> BackupState:
        row = self._execute(
            "SELECT method, folder, schedule, keep, last_success, last_size, vault_record_id,"
            " backup_key FROM backup_state WHERE id = 1"
        ).fetchone()
        return BackupState(
            method=row[0],
            folder=row[1],
            schedule=row[2],
            keep=row[3],
            last_success=row[4],
            last_size=row[5],
            vault_record_id=row[6],
            backup_key=bytes(row[7]) if row[7] is not None else None,
        )

    def update(self, **fields: Any) -> None:
        allowed = set(BackupState.__dataclass_fields__)
        unknown = set(fields) - allowed
        if unknown:
            raise StoreError(f"unknown backup setting {sorted(unknown)[0]!r}")
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._execute(
            f"UPDATE backup_state SET {assignments} WHERE id = 1",  # noqa: S608
            tuple(fields.values()),
        )


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return {"$b": base64.b64encode(bytes(value)).decode("ascii")}
    return value


_PLAIN_TYPES = (str, int, float, type(None))


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        encoded = value.get("$b")
        if not isinstance(encoded, str) or len(value) != 1:
            raise StoreError("a backup record holds a malformed value")
        return base64.b64decode(encoded)
    if value is None or isinstance(value, str | int | float):
        return value
    raise StoreError("a backup record holds a value of an unknown type")


@dataclass(frozen=True)
class DatabaseImageFile:
    """A copy of a store under its own key (see `Store.export_image`)."""

    path: Path
    key: bytes = field(repr=False)
    page_size: int
    schema: int
    size: int

    def discard(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)

    def row_counts(self) -> dict[str, int]:
        """Rows per backed-up table, read from the image itself: a restore counts
        here while SQLCipher copies the image into the new store on another thread."""
        connection = _open_checked_image(self)
        try:
            return _row_counts(connection)
        except sqlcipher.DatabaseError:
            raise StoreCorrupt("the backup's database is damaged") from None
        finally:
            connection.close()


@dataclass(frozen=True)
class FrozenStoreFile:
    """The store's own file while `Store.frozen_file` holds it unchanged: SQLCipher 4
    pages under `key` (its defaults: HMAC-SHA512), every committed change in it."""

    path: Path
    key: bytes = field(repr=False)
    page_size: int
    schema: int
    size: int


def _connect_image(path: Path, key: bytes, page_size: int | None = None) -> sqlcipher.Connection:
    connection = sqlcipher.connect(str(path), isolation_level=None, timeout=10)
    try:
        connection.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        connection.execute(f"PRAGMA cipher_compatibility = {IMAGE_CIPHER_COMPATIBILITY}")
        connection.execute(f"PRAGMA cipher_hmac_algorithm = {IMAGE_HMAC}")
        if page_size is not None:
            connection.execute(f"PRAGMA cipher_page_size = {int(page_size)}")
        connection.execute("PRAGMA cipher_memory_security = OFF")
    except BaseException:
        connection.close()
        raise
    return connection


def _open_checked_image(image: DatabaseImageFile) -> sqlcipher.Connection:
    """The image, opened, once its structure is known to be ours: only tables,
    indexes and triggers our own migrations make are let in."""
    if image.schema > SCHEMA_VERSION:
        raise StoreError("the backup was made by a newer Cipherline; update the app")
    source = _connect_image(image.path, image.key, image.page_size)
    try:
        try:
            found = _schema_of(source)
        except sqlcipher.DatabaseError:
            raise StoreCorrupt("the backup's database does not open with its key") from None
        if found != _schema_of_version(image.schema):
            raise StoreCorrupt("the backup's database does not have Cipherline's structure")
    except BaseException:
        source.close()
        raise
    return source


def _row_counts(connection: sqlcipher.Connection) -> dict[str, int]:
    return {
        table: int(connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608
        for table in BACKUP_TABLES
    }


def _schema_of(connection: sqlcipher.Connection) -> list[tuple[str, str, str]]:
    """(type, name, SQL) of everything in a database but a full-text index's own
    tables, whose definitions belong to the SQLite version rather than to us."""
    rows = connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    virtual = [
        name
        for kind, name, _table, sql in rows
        if kind == "table" and "VIRTUAL" in (sql or "").upper()
    ]
    return sorted(
        (str(kind), str(name), str(sql))
        for kind, name, table, sql in rows
        if not any(str(table).startswith(v + "_") for v in virtual)
    )


def _schema_of_version(version: int) -> list[tuple[str, str, str]]:
    connection = sqlcipher.connect(":memory:", isolation_level=None)
    try:
        for migration in MIGRATIONS[:version]:
            for statement in _split_statements(migration):
                connection.execute(statement)
        return _schema_of(connection)
    finally:
        connection.close()


def _copy_pages(
    source: sqlcipher.Connection,
    target: sqlcipher.Connection,
    target_path: Path,
    page_size: int,
) -> None:
    """SQLite's backup API in steps, starting the target's writeback as it grows,
    so the commit's fsync at the end finds most pages already on disk. (Only for a
    source nobody else writes: a step-wise copy restarts when its source changes.)"""
    fd = os.open(target_path, os.O_RDONLY | os.O_CREAT, 0o600)
    pacer = WritebackPacer()
    try:
        pacer.start_file(fd)

        def copied(_status: int, remaining: int, total: int) -> None:
            pacer.written((total - remaining) * page_size)

        source.backup(target, pages=IMAGE_STEP_PAGES, progress=copied)
        pacer.end_file()
    finally:
        pacer.close()
        os.close(fd)


def _create_private_file(path: Path) -> None:
    """Creates `path` empty and 0600 if it is missing, and tightens it to 0600.

    SQLite creates a database file 0644 less the umask, and its -wal, -shm and
    -journal files with the database file's mode (src/os_unix.c, findCreateFileMode
    and unixOpenSharedMemory, which fchmod past the umask). So the database file is
    made 0600 before SQLite ever opens it (an empty file is an empty database), and
    the files beside it follow."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)


def _tighten_profile(profile: Path) -> None:
    """Every folder under a profile 0700 and every file 0600: profiles written by
    versions that left the -wal and -shm files 0644 and folders 0755 are fixed on
    open. Symbolic links are neither followed nor changed."""
    make_private_dir(profile)
    for folder, folders, files in os.walk(profile):
        for name in folders:
            _chmod_if(Path(folder, name), PRIVATE_DIR_MODE)
        for name in files:
            _chmod_if(Path(folder, name), PRIVATE_FILE_MODE)


def _chmod_if(path: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        info = path.lstat()
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o777 != mode:
            os.chmod(path, mode)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class SendChannelRow:
    channel_id: bytes = field(repr=False)
    state: bytes = field(repr=False)
    seed: bytes | None = field(repr=False)  # None once the channel is confirmed
    certificate_digest: bytes = field(repr=False)
    session_marker: bytes = field(repr=False)


@dataclass(frozen=True)
class ReceiveChannelRow:
    id: int
    username: str
    device_id: int
    expires: int
    state: bytes | None = field(repr=False)  # None: retired


class SealedChannelRepository(_Repository):
    """Sealed channels' state (app/services/sealing.py, docs/protocol.md §11): the
    chain keys of both ends, the tags expected, and the copies sealed but not yet
    taken by the relay. Only ever in this encrypted store."""

    # ---- sending end -------------------------------------------------------------
    def send_channel(self, username: str, device_id: int) -> SendChannelRow | None:
        row = self._execute(
            "SELECT channel_id, state, seed, certificate_digest, session_marker"
            " FROM sealed_send_channels WHERE username = ? AND device_id = ?",
            (username, device_id),
        ).fetchone()
        if row is None:
            return None
        seed = None if row[2] is None else bytes(row[2])
        return SendChannelRow(bytes(row[0]), bytes(row[1]), seed, bytes(row[3]), bytes(row[4]))

    def save_send_channel(self, username: str, device_id: int, channel: SendChannelRow) -> None:
        self._execute(
            "INSERT INTO sealed_send_channels (username, device_id, channel_id, state, seed,"
            " certificate_digest, session_marker) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (username, device_id) DO UPDATE SET channel_id = excluded.channel_id,"
            " state = excluded.state, seed = excluded.seed,"
            " certificate_digest = excluded.certificate_digest,"
            " session_marker = excluded.session_marker",
            (
                username,
                device_id,
                channel.channel_id,
                channel.state,
                channel.seed,
                channel.certificate_digest,
                channel.session_marker,
            ),
        )

    def delete_send_channel(self, username: str, device_id: int) -> None:
        self._execute(
            "DELETE FROM sealed_send_channels WHERE username = ? AND device_id = ?",
            (username, device_id),
        )
        self._execute(
            "DELETE FROM sealed_send_pending WHERE username = ? AND device_id = ?",
            (username, device_id),
        )

    def add_pending(
        self,
        client_id: str,
        username: str,
        device_id: int,
        channel_id: bytes,
        *,
        opener: bool,
        digest: bytes,
        envelope: bytes | None,
        now: int,
    ) -> None:
        self._execute(
            "INSERT INTO sealed_send_pending (client_id, username, device_id, channel_id,"
            " opener, digest, envelope, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (client_id) DO UPDATE SET username = excluded.username,"
            " device_id = excluded.device_id, channel_id = excluded.channel_id,"
            " opener = excluded.opener, digest = excluded.digest,"
            " envelope = excluded.envelope",
            (client_id, username, device_id, channel_id, int(opener), digest, envelope, now),
        )

    def pending(self, client_id: str) -> tuple[bytes, bytes, bytes | None] | None:
        """(channel id, digest of the body, channel envelope or None) of a copy
        sealed before."""
        row = self._execute(
            "SELECT channel_id, digest, envelope FROM sealed_send_pending WHERE client_id = ?",
            (client_id,),
        ).fetchone()
        if row is None:
            return None
        return bytes(row[0]), bytes(row[1]), None if row[2] is None else bytes(row[2])

    def settle_pending(self) -> None:
        """Copies that left the outbox are settled: the relay took them (or refused
        them for good). A channel one of whose openers left is confirmed: its seed
        is deleted and its envelopes go as channel envelopes from now on."""
        self._execute(
            "UPDATE sealed_send_channels SET seed = NULL WHERE seed IS NOT NULL AND channel_id IN"
            " (SELECT channel_id FROM sealed_send_pending WHERE opener = 1"
            " AND client_id NOT IN (SELECT client_id FROM outbox))"
        )
        self._execute(
            "DELETE FROM sealed_send_pending WHERE client_id NOT IN (SELECT client_id FROM outbox)"
        )

    def archive_mark(self, username: str, device_id: int) -> int:
        """The newest archived session of a device (0: none): a session replaced
        since a channel was opened is one the channel must not outlive."""
        row = self._execute(
            "SELECT MAX(id) FROM archived_sessions WHERE username = ? AND device_id = ?",
            (username, device_id),
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    # ---- receiving end -----------------------------------------------------------
    def has_seed(self, seed_id: bytes) -> bool:
        row = self._execute(
            "SELECT 1 FROM sealed_receive_channels WHERE seed_id = ?", (seed_id,)
        ).fetchone()
        return row is not None

    def add_receive_channel(
        self,
        username: str,
        device_id: int,
        *,
        seed_id: bytes,
        expires: int,
        state: bytes,
        tags: Iterable[bytes],
        now: int,
    ) -> int:
        cursor = self._execute(
            "INSERT INTO sealed_receive_channels (username, device_id, seed_id, expires, state,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (username, device_id, seed_id, expires, state, now),
        )
        channel_id = int(cursor.lastrowid)
        self._add_tags(channel_id, tags)
        return channel_id

    def _add_tags(self, channel_id: int, tags: Iterable[bytes]) -> None:
        self._store.executemany(
            "INSERT OR IGNORE INTO sealed_channel_tags (tag, channel_id) VALUES (?, ?)",
            ((tag, channel_id) for tag in tags),
        )

    def by_tag(self, tag: bytes) -> ReceiveChannelRow | None:
        row = self._execute(
            "SELECT c.id, c.username, c.device_id, c.expires, c.state"
            " FROM sealed_channel_tags t JOIN sealed_receive_channels c ON c.id = t.channel_id"
            " WHERE t.tag = ?",
            (tag,),
        ).fetchone()
        if row is None:
            return None
        state = None if row[4] is None else bytes(row[4])
        return ReceiveChannelRow(int(row[0]), row[1], int(row[2]), int(row[3]), state)

    def receive_channels(self, username: str, device_id: int) -> list[ReceiveChannelRow]:
        """A contact device's live channels, newest first."""
        rows = self._execute(
            "SELECT id, username, device_id, expires, state FROM sealed_receive_channels"
            " WHERE username = ? AND device_id = ? AND state IS NOT NULL ORDER BY id DESC",
            (username, device_id),
        ).fetchall()
        return [ReceiveChannelRow(int(r[0]), r[1], int(r[2]), int(r[3]), bytes(r[4])) for r in rows]

    def update_receive_channel(
        self, channel_id: int, state: bytes, removed: Iterable[bytes], added: Iterable[bytes]
    ) -> None:
        self._execute(
            "UPDATE sealed_receive_channels SET state = ? WHERE id = ?", (state, channel_id)
        )
        self._store.executemany(
            "DELETE FROM sealed_channel_tags WHERE tag = ? AND channel_id = ?",
            ((tag, channel_id) for tag in removed),
        )
        self._add_tags(channel_id, added)

    def retire_receive_channel(self, channel_id: int) -> None:
        """Ends a channel: its keys and tags go; its seed id stays until it expires."""
        self._execute("UPDATE sealed_receive_channels SET state = NULL WHERE id = ?", (channel_id,))
        self._execute("DELETE FROM sealed_channel_tags WHERE channel_id = ?", (channel_id,))

    def drop_expired(self, now: int) -> None:
        """Channels whose certificate expired: nothing of theirs can open any more."""
        self._execute(
            "DELETE FROM sealed_channel_tags WHERE channel_id IN"
            " (SELECT id FROM sealed_receive_channels WHERE expires <= ?)",
            (now,),
        )
        self._execute("DELETE FROM sealed_receive_channels WHERE expires <= ?", (now,))


@dataclass(frozen=True)
class HistoryChunkRow:
    """A history chunk another of our devices announced (schema.py, migration 15)."""

    transfer_id: bytes = field(repr=False)
    index: int
    last: bool
    messages: int
    total: int
    blob_id: str
    key: bytes | None = field(repr=False)
    digest: bytes | None = field(repr=False)
    size: int
    sender_device: int
    state: str


# What a history transfer reads of a message: the message, its chat, and its
# attachment's pointer (NULLs for none). app/services/history.py names the fields.
_HISTORY_EXPORT = (
    "SELECT m.id, c.kind, c.peer, c.group_id, m.uuid, m.sender, m.outgoing, m.kind, m.body,"
    " m.sent_at, m.received_at, m.status, m.expires_at, m.quote_uuid, m.quote_author,"
    " m.quote_text, m.reactions, m.edited_at, a.id, a.filename, a.mime, a.size, a.blob_id,"
    " a.key, a.digest, a.caption, a.thumbnail, a.thumbnail_width, a.thumbnail_height"
    " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
    " LEFT JOIN attachments a ON a.message_id = m.id"
    " WHERE m.id > ? AND m.id <= ? ORDER BY m.id, a.id LIMIT ?"
)
# SQLite's bound on variables is far above this; batches keep statements small.
_IN_BATCH = 500


class HistoryRepository(_Repository):
    """History transfer to a linked device (app/services/history.py): what the
    sending device reads in bulk, what the receiving device writes in bulk, and the
    receiving device's chunk announcements (schema.py, migration 15). Every method
    runs inside the caller's transaction."""

    _CHUNK_COLUMNS = (
        "transfer_id, chunk_index, last, messages, total, blob_id, key, digest, size,"
        " sender_device, state"
    )

    # ---- the sending device -----------------------------------------------------
    def newest_message_id(self) -> int:
        return int(self._execute("SELECT COALESCE(MAX(id), 0) FROM messages").fetchone()[0])

    def count_messages(self, after_id: int, until_id: int) -> int:
        row = self._execute(
            "SELECT COUNT(*) FROM messages WHERE id > ? AND id <= ?", (after_id, until_id)
        ).fetchone()
        return int(row[0])

    def export_rows(self, after_id: int, until_id: int, limit: int) -> list[tuple[Any, ...]]:
        """Messages with `after_id` < id <= `until_id`, by id, with their chat and
        attachment (a message with several attachments comes once per attachment)."""
        return list(self._execute(_HISTORY_EXPORT, (after_id, until_id, limit)).fetchall())

    # ---- the receiving device ---------------------------------------------------
    def existing_uuids(self, uuids: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(uuids), _IN_BATCH):
            batch = uuids[start : start + _IN_BATCH]
            marks = ", ".join("?" for _ in batch)
            rows = self._execute(
                f"SELECT uuid FROM messages WHERE uuid IN ({marks})",  # noqa: S608
                tuple(batch),
            ).fetchall()
            found.update(str(r[0]) for r in rows)
        return found

    def ids_of(self, uuids: list[str]) -> dict[str, int]:
        ids: dict[str, int] = {}
        for start in range(0, len(uuids), _IN_BATCH):
            batch = uuids[start : start + _IN_BATCH]
            marks = ", ".join("?" for _ in batch)
            rows = self._execute(
                f"SELECT uuid, id FROM messages WHERE uuid IN ({marks})",  # noqa: S608
                tuple(batch),
            ).fetchall()
            ids.update((str(r[0]), int(r[1])) for r in rows)
        return ids

    def add_messages(self, rows: list[tuple[Any, ...]]) -> None:
        """Bulk insert (conversation id, uuid, sender, outgoing, kind, body, sent_at,
        received_at, status, expires_at, quote uuid, quote author, quote text,
        reactions, edited_at); the FTS trigger indexes each row as it goes in."""
        self._store.executemany(
            "INSERT INTO messages (conversation_id, uuid, sender, outgoing, kind, body, sent_at,"
            " received_at, status, expires_at, quote_uuid, quote_author, quote_text, reactions,"
            " edited_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def add_attachments(self, rows: list[tuple[Any, ...]]) -> None:
        """Bulk insert (message id, filename, mime, size, blob id, key, digest, state,
        caption, thumbnail, thumbnail width, thumbnail height), none downloaded."""
        self._store.executemany(
            "INSERT INTO attachments (message_id, filename, mime, size, blob_id, key, digest,"
            " local_path, state, caption, thumbnail, thumbnail_width, thumbnail_height)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
            rows,
        )

    def announce(self, chunk: HistoryChunkRow, *, now: int) -> bool:
        """Records an announced chunk; False if it was announced before (a replay)."""
        cursor = self._execute(
            f"INSERT OR IGNORE INTO history_chunks ({self._CHUNK_COLUMNS}, announced_at)"  # noqa: S608
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)",
            (
                chunk.transfer_id,
                chunk.index,
                int(chunk.last),
                chunk.messages,
                chunk.total,
                chunk.blob_id,
                chunk.key,
                chunk.digest,
                chunk.size,
                chunk.sender_device,
                now,
            ),
        )
        return bool(cursor.rowcount)

    def pending(self) -> list[HistoryChunkRow]:
        rows = self._execute(
            f"SELECT {self._CHUNK_COLUMNS} FROM history_chunks"  # noqa: S608
            " WHERE state = 'pending' ORDER BY announced_at, transfer_id, chunk_index"
        ).fetchall()
        return [self._chunk(row) for row in rows]

    def get(self, transfer_id: bytes, index: int) -> HistoryChunkRow | None:
        row = self._execute(
            f"SELECT {self._CHUNK_COLUMNS} FROM history_chunks"  # noqa: S608
            " WHERE transfer_id = ? AND chunk_index = ?",
            (transfer_id, index),
        ).fetchone()
        return self._chunk(row) if row else None

    def settle(self, transfer_id: bytes, index: int, state: str) -> None:
        """Imported or failed for good: its key and digest are no longer kept."""
        self._execute(
            "UPDATE history_chunks SET state = ?, key = NULL, digest = NULL"
            " WHERE transfer_id = ? AND chunk_index = ?",
            (state, transfer_id, index),
        )

    def latest_transfer(self) -> bytes | None:
        row = self._execute(
            "SELECT transfer_id FROM history_chunks ORDER BY announced_at DESC LIMIT 1"
        ).fetchone()
        return bytes(row[0]) if row else None

    def progress(self, transfer_id: bytes) -> tuple[int, int, bool]:
        """(messages settled, messages in the transfer, every chunk settled)."""
        row = self._execute(
            "SELECT COALESCE(SUM(CASE WHEN state != 'pending' THEN messages END), 0),"
            " COALESCE(MAX(total), 0), MAX(CASE WHEN last = 1 THEN chunk_index END),"
            " COALESCE(SUM(CASE WHEN state != 'pending' THEN 1 END), 0)"
            " FROM history_chunks WHERE transfer_id = ?",
            (transfer_id,),
        ).fetchone()
        done, total, last_index, settled = int(row[0]), int(row[1]), row[2], int(row[3])
        return done, total, last_index is not None and settled == int(last_index) + 1

    @staticmethod
    def _chunk(row: tuple[Any, ...]) -> HistoryChunkRow:
        return HistoryChunkRow(
            transfer_id=bytes(row[0]),
            index=int(row[1]),
            last=bool(row[2]),
            messages=int(row[3]),
            total=int(row[4]),
            blob_id=str(row[5]),
            key=bytes(row[6]) if row[6] is not None else None,
            digest=bytes(row[7]) if row[7] is not None else None,
            size=int(row[8]),
            sender_device=int(row[9]),
            state=str(row[10]),
        )


class Store:
    """One profile's encrypted database. Thread-safe by one lock; the services use it
    from a single worker thread, the lock only guards against mistakes."""

    def __init__(self, path: Path, connection: sqlcipher.Connection) -> None:
        self.path = path
        self._connection = connection
        self._lock = threading.RLock()
        self._depth = 0
        self._db_key = b""
        self.account = AccountRepository(self)
        self.contacts = ContactRepository(self)
        self.sessions = SessionRepository(self)
        self.device_lists = DeviceListRepository(self)
        self.conversations = ConversationRepository(self)
        self.messages = MessageRepository(self)
        self.attachments = AttachmentRepository(self)
        self.outbox = OutboxRepository(self)
        self.groups = GroupRepository(self)
        self.settings = SettingsRepository(self)
        self.backup_state = BackupStateRepository(self)
        # What receiving remembers (receiving.py): replay memory and quarantine.
        self.session_starts = SessionStartRepository(self)
        self.handled_contents = HandledContentRepository(self)
        self.early_changes = EarlyChangeRepository(self)
        self.quarantine = QuarantineRepository(self)
        # What waits for a changed identity to be accepted (trust.py).
        self.held_sends = HeldSendRepository(self)
        # Sealed channels' keys and tags (app/services/sealing.py).
        self.sealed_channels = SealedChannelRepository(self)
        # History transfer to a linked device (app/services/history.py).
        self.history = HistoryRepository(self)

    # ---- opening --------------------------------------------------------------
    @staticmethod
    def exists(profile: Path) -> bool:
        return (profile / KEY_FILE_NAME).exists() and (profile / DB_FILE_NAME).exists()

    @classmethod
    def create(cls, profile: Path, protector: Protector, rng: Rng | None = None) -> Store:
        rng = rng or SystemRng()
        if (profile / KEY_FILE_NAME).exists() or (profile / DB_FILE_NAME).exists():
            raise StoreError(f"a store already exists in {profile}")
        _tighten_profile(profile)
        db_key = new_db_key(rng)
        key_file = protector.wrap(db_key, rng)
        store = cls._open_with_key(profile / DB_FILE_NAME, db_key)
        # The key file is written last: a crash before this leaves no half-made
        # profile that looks openable.
        write_atomically(profile / KEY_FILE_NAME, key_file.to_json().encode())
        return store

    @classmethod
    def open(cls, profile: Path, protector: Protector) -> Store:
        key_path = profile / KEY_FILE_NAME
        try:
            key_file = KeyFile.from_json(key_path.read_text())
        except FileNotFoundError:
            raise StoreError(f"no store in {profile}") from None
        db_key = protector.unwrap(key_file)
        _tighten_profile(profile)
        return cls._open_with_key(profile / DB_FILE_NAME, db_key)

    @staticmethod
    def verify_protector(profile: Path, protector: Protector) -> None:
        """Raises (e.g. WrongPassphrase) unless `protector` unwraps this profile's key."""
        protector.unwrap(KeyFile.from_json((profile / KEY_FILE_NAME).read_text()))

    @staticmethod
    def key_method(profile: Path) -> str:
        try:
            return KeyFile.from_json((profile / KEY_FILE_NAME).read_text()).method
        except FileNotFoundError:
            raise StoreError(f"no store in {profile}") from None

    @classmethod
    def change_protection(
        cls, profile: Path, old: Protector, new: Protector, rng: Rng | None = None
    ) -> None:
        """Re-wrap the database key; the database itself is not touched."""
        key_path = profile / KEY_FILE_NAME
        db_key = old.unwrap(KeyFile.from_json(key_path.read_text()))
        write_atomically(key_path, new.wrap(db_key, rng or SystemRng()).to_json().encode())

    @classmethod
    def _open_with_key(cls, path: Path, db_key: bytes) -> Store:
        _create_private_file(path)
        for suffix in ("-wal", "-shm", "-journal"):
            _chmod_if(path.with_name(path.name + suffix), PRIVATE_FILE_MODE)
        connection = sqlcipher.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=10
        )
        try:
            connection.execute(f"PRAGMA key = \"x'{db_key.hex()}'\"")
            connection.execute("PRAGMA cipher_memory_security = OFF")
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlcipher.DatabaseError:
                raise StoreCorrupt(
                    "the database does not open with this key (damaged or not ours)"
                ) from None
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("PRAGMA secure_delete = ON")
            store = cls(path, connection)
            store._migrate()
            # Kept so a backup can read its own snapshot on a second connection
            # instead of holding the store's lock for the whole export.
            store._db_key = db_key
        except BaseException:
            connection.close()
            raise
        return store

    def _migrate(self, migrations: list[str] | None = None) -> None:
        migrations = MIGRATIONS if migrations is None else migrations
        version = int(self._connection.execute("PRAGMA user_version").fetchone()[0])
        if version > len(migrations):
            raise StoreError(
                f"this profile was written by a newer Cipherline (schema {version});"
                " update the app to open it"
            )
        for number in range(version + 1, len(migrations) + 1):
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                for statement in _split_statements(migrations[number - 1]):
                    self._connection.execute(statement)
                self._connection.execute(f"PRAGMA user_version = {number}")
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return int(self.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    # Set when `erase_overwritten` could not finish (a reader was open); retry later.
    erase_pending: bool = False

    def erase_overwritten(self) -> bool:
        """Makes deleted and overwritten rows (a deleted private prekey) unrecoverable
        from the profile's files, not just unreferenced. `secure_delete` already
        zeroes what a transaction frees, but the write-ahead log keeps earlier copies
        of changed pages until they are overwritten; this checkpoints it and truncates
        it to nothing. Call outside a transaction. Never waits for a reader (a
        backup's snapshot): returns False, and sets `erase_pending`, if one kept it
        from finishing."""
        with self._lock:
            if self._depth:
                raise StoreError("erase_overwritten runs outside a transaction")
            timeout = int(self._connection.execute("PRAGMA busy_timeout").fetchone()[0])
            self._connection.execute("PRAGMA busy_timeout = 0")
            try:
                busy = int(
                    self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                )
            except sqlcipher.OperationalError:
                busy = 1
            finally:
                self._connection.execute(f"PRAGMA busy_timeout = {timeout}")
            self.erase_pending = busy != 0
            return not self.erase_pending

    # ---- statements -----------------------------------------------------------
    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlcipher.Cursor:
        with self._lock:
            try:
                return self._connection.execute(sql, params)
            except sqlcipher.ProgrammingError as error:
                # Work that outlives the profile (a timer during shutdown) gets our
                # own error, not the driver's.
                if "closed database" in str(error):
                    raise StoreError("this profile is closed") from None
                raise

    def executemany(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        with self._lock:
            self._connection.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Store]:
        """All writes inside commit together or not at all. A nested transaction is
        a savepoint: if it fails, only its own writes are undone, and the outer
        one still decides about the rest."""
        with self._lock:
            if self._depth:
                savepoint = f"nested_{self._depth}"
                self._connection.execute(f"SAVEPOINT {savepoint}")
                self._depth += 1
                try:
                    yield self
                except BaseException:
                    self._connection.execute(f"ROLLBACK TO {savepoint}")
                    self._connection.execute(f"RELEASE {savepoint}")
                    raise
                else:
                    self._connection.execute(f"RELEASE {savepoint}")
                finally:
                    self._depth -= 1
                return
            self._connection.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            else:
                self._connection.execute("COMMIT")
            finally:
                self._depth = 0

    # ---- backup ---------------------------------------------------------------
    def export_records(self) -> Iterator[tuple[str, bytes]]:
        """Every row as (table, canonical JSON), from one snapshot: the contents of a
        version 1 backup. Backups are written as version 2 (`export_image`) now;
        this stays as the writer half of what `import_records` still reads, so the
        store tests round-trip version 1 contents.

        Rows are read with a cursor, never all at once; the outbox (ciphertexts
        waiting to be sent) is left out because it is bound to this moment.
        """
        connection = self._snapshot_connection()
        try:
            connection.execute("BEGIN")
            try:
                counts = {
                    table: int(
                        connection.execute(
                            f"SELECT COUNT(*) FROM {table}"  # noqa: S608
                        ).fetchone()[0]
                    )
                    for table in BACKUP_TABLES
                }
                meta = {"schema": SCHEMA_VERSION, "counts": counts}
                yield "meta", json.dumps(meta, sort_keys=True).encode()
                for table in BACKUP_TABLES:
                    cursor = connection.execute(f"SELECT * FROM {table}")  # noqa: S608
                    names = [column[0] for column in cursor.description]
                    while True:
                        rows = cursor.fetchmany(500)
                        if not rows:
                            break
                        for row in rows:
                            record = {
                                name: value if type(value) in _PLAIN_TYPES else _encode_value(value)
                                for name, value in zip(names, row, strict=True)
                            }
                            yield table, json.dumps(record, separators=(",", ":")).encode()
            finally:
                connection.execute("COMMIT")
        finally:
            connection.close()

    def export_image(self, rng: Rng | None = None) -> DatabaseImageFile:
        """A copy of the store for a backup, under a fresh key; `discard()` it after.

        SQLCipher copies the pages of one read snapshot (the app goes on writing)
        into a new database beside the store, encrypted under a random key that
        exists only in memory and, later, inside the backup's encrypted stream: the
        store's own key never leaves the device and no plaintext reaches the disk.
        Copying pages instead of rows is what lets a backup and a restore run at
        disk speed: no row is parsed and no search index is rebuilt. The outbox
        (ciphertexts bound to this moment) is wiped from the copy.
        """
        rng = rng or SystemRng()
        self._remove_stale_images()
        key = rng.random_bytes(IMAGE_KEY_LENGTH)
        path = self.path.parent / f"{IMAGE_PREFIX}{os.getpid()}-{time.time_ns()}.db"
        image = DatabaseImageFile(path, key, 0, 0, 0)
        try:
            _create_private_file(path)
            source = self._snapshot_connection()
            try:
                target = _connect_image(path, key)
                try:
                    # Scratch: a crash throws the image away, so it never waits for fsync.
                    target.execute("PRAGMA synchronous = OFF")
                    source.backup(target)
                    target.execute("PRAGMA secure_delete = ON")
                    target.execute("DELETE FROM outbox")
                    target.execute("DELETE FROM outbox_backoff")
                    # One self-contained file: no -wal beside it.
                    target.execute("PRAGMA journal_mode = DELETE")
                    page_size = int(target.execute("PRAGMA page_size").fetchone()[0])
                    schema = int(target.execute("PRAGMA user_version").fetchone()[0])
                finally:
                    target.close()
            finally:
                source.close()
            os.chmod(path, 0o600)
            return DatabaseImageFile(path, key, page_size, schema, path.stat().st_size)
        except BaseException:
            image.discard()
            raise

    def _remove_stale_images(self) -> None:
        """Images left by a backup that was killed (their key died with it)."""
        for leftover in self.path.parent.glob(f"{IMAGE_PREFIX}*"):
            pid = leftover.name.removeprefix(IMAGE_PREFIX).split("-", 1)[0]
            if not pid.isdigit() or not _process_alive(int(pid)):
                leftover.unlink(missing_ok=True)

    @classmethod
    def create_from_image(
        cls,
        profile: Path,
        protector: Protector,
        image: DatabaseImageFile,
        rng: Rng | None = None,
    ) -> Store:
        """A new store holding a backup's database image, re-encrypted under a new key.

        The image's key came out of a backup file; the restored store gets a key of
        its own, so whoever holds that backup can never open this device's store.
        """
        if (profile / KEY_FILE_NAME).exists() or (profile / DB_FILE_NAME).exists():
            raise StoreError(f"a store already exists in {profile}")
        rng = rng or SystemRng()
        source = _open_checked_image(image)
        try:
            _tighten_profile(profile)
            db_key = new_db_key(rng)
            _create_private_file(profile / DB_FILE_NAME)
            target = sqlcipher.connect(str(profile / DB_FILE_NAME), isolation_level=None)
            try:
                target.execute(f"PRAGMA key = \"x'{db_key.hex()}'\"")
                target.execute("PRAGMA cipher_memory_security = OFF")
                _copy_pages(source, target, profile / DB_FILE_NAME, image.page_size)
            finally:
                target.close()
        finally:
            source.close()
        store = cls._open_with_key(profile / DB_FILE_NAME, db_key)
        try:
            # The key file last, as in create(): until then the profile is not a store.
            key_file = protector.wrap(db_key, rng)
            write_atomically(profile / KEY_FILE_NAME, key_file.to_json().encode())
        except BaseException:
            store.close()
            raise
        return store

    def table_counts(self) -> dict[str, int]:
        with self._lock:
            return _row_counts(self._connection)

    @contextlib.contextmanager
    def frozen_file(self) -> Iterator[FrozenStoreFile | None]:
        """The store's file, unchanged for as long as the block runs, so that a
        backup can read its pages raw while the app goes on writing; None (use
        `export_image`) when that cannot be had at once.

        Empties the write-ahead log into the file, then opens a read transaction on
        a second connection. Found with the log still empty, that transaction reads
        the file alone, and holds SQLite's WAL_READ_LOCK(0), without which no
        checkpoint may copy a page into the file: new commits wait in the log until
        the block ends. A commit that slips in between leaves the log non-empty
        (the file alone is then not the newest state), and this answers None."""
        if not self.erase_overwritten():
            yield None
            return
        connection = self._snapshot_connection()
        try:
            connection.execute("BEGIN")
            schema = int(connection.execute("PRAGMA user_version").fetchone()[0])
            page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            log = self.path.with_name(self.path.name + "-wal")
            with contextlib.suppress(FileNotFoundError):
                if log.stat().st_size > 0:
                    yield None
                    return
            yield FrozenStoreFile(
                self.path, self._db_key, page_size, schema, self.path.stat().st_size
            )
        finally:
            with contextlib.suppress(sqlcipher.Error):
                connection.execute("ROLLBACK")
            connection.close()

    def _snapshot_connection(self) -> sqlcipher.Connection:
        """A read-only second connection: WAL gives it a consistent snapshot while
        the app goes on writing through the main one."""
        connection = sqlcipher.connect(str(self.path), isolation_level=None, timeout=10)
        try:
            connection.execute(f"PRAGMA key = \"x'{self._db_key.hex()}'\"")
            connection.execute("PRAGMA cipher_memory_security = OFF")
            connection.execute("PRAGMA query_only = ON")
        except BaseException:
            connection.close()
            raise
        return connection

    def import_records(self, records: Iterable[tuple[str, bytes]]) -> dict[str, int]:
        """Load a backup into this (empty) store in one transaction; all or nothing."""
        if self.account.get() is not None or self.conversations.all():
            raise StoreError("restoring needs an empty profile; nothing was changed")
        columns = {
            table: [row[1] for row in self.execute(f"PRAGMA table_info({table})").fetchall()]
            for table in BACKUP_TABLES
        }
        imported = dict.fromkeys(BACKUP_TABLES, 0)
        expected: dict[str, int] | None = None
        backup_schema = SCHEMA_VERSION
        # Consecutive rows of one table share one executemany: restoring a million
        # messages is then bound by SQLite and the FTS triggers, not by Python.
        batch: list[tuple[Any, ...]] = []
        batch_shape: tuple[str, tuple[str, ...]] | None = None

        def flush() -> None:
            if not batch or batch_shape is None:
                return
            kind, names = batch_shape
            placeholders = ", ".join("?" for _ in names)
            try:
                self.executemany(
                    f"INSERT INTO {kind} ({', '.join(names)}) VALUES ({placeholders})",  # noqa: S608
                    batch,
                )
            except sqlcipher.Error as error:
                raise StoreError(f"a {kind} record does not fit: {error}") from None
            batch.clear()

        with self.transaction():
            self.execute("DELETE FROM backup_state")
            # Index the restored messages in one pass at the end instead of row by
            # row (4x faster); the trigger comes back in the same transaction.
            fts_trigger = self.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'trigger'"
                " AND name = 'messages_fts_insert'"
            ).fetchone()
            if fts_trigger:
                self.execute("DROP TRIGGER messages_fts_insert")
            for kind, payload in records:
                if kind == "meta":
                    meta = self._decode_record(payload)
                    schema = meta.get("schema")
                    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
                        raise StoreError("the backup was made by a newer Cipherline")
                    backup_schema = schema
                    counts = meta.get("counts")
                    if not isinstance(counts, dict):
                        raise StoreError("the backup's table of contents is malformed")
                    expected = {str(k): int(v) for k, v in counts.items()}
                    continue
                if kind not in columns:
                    raise StoreError(f"the backup holds an unknown kind of record {kind[:40]!r}")
                record = self._decode_record(payload)
                names = [name for name in record if name in columns[kind]]
                if len(names) != len(record):
                    raise StoreError(f"a {kind} record has unknown fields")
                shape = (kind, tuple(names))
                if shape != batch_shape or len(batch) >= IMPORT_BATCH:
                    flush()
                    batch_shape = shape
                batch.append(
                    tuple(
                        value if type(value) in _PLAIN_TYPES else _decode_value(value)
                        for value in (record[name] for name in names)
                    )
                )
                imported[kind] += 1
            flush()
            if expected is None:
                raise StoreError("the backup has no table of contents")
            for table, count in expected.items():
                if imported.get(table, 0) != count:
                    raise StoreError(
                        f"the backup lists {count} {table} rows but holds {imported.get(table, 0)}"
                    )
            if not self.execute("SELECT 1 FROM backup_state").fetchone():
                self.execute("INSERT INTO backup_state (id) VALUES (1)")
            if backup_schema < CONTACTS_SCHEMA:
                # Made before message requests: its people were contacts then and
                # stay so, as the migration does for a store (app/store/schema.py).
                self.execute("UPDATE contacts SET accepted = 1")
                self.execute(GRANDFATHER_CONTACTS)
            if fts_trigger:
                self.execute("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')")
                self.execute(fts_trigger[0])
        return imported

    @staticmethod
    def _decode_record(payload: bytes) -> dict[str, Any]:
        try:
            record = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreError("a backup record is not valid JSON") from None
        if not isinstance(record, dict):
            raise StoreError("a backup record is not an object")
        return record
