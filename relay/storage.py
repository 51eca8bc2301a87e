"""The relay's storage: one interface, SQLite (default) and PostgreSQL.

SQL is written once with `?` placeholders; the PostgreSQL backend rewrites them
to `%s`. Each backend hands out a connection inside `transaction()`; everything
that must be atomic (consuming a one-time prekey, idempotent sends, a quota check
and the write it allows) happens in one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

ENVELOPES_TABLE = """
CREATE TABLE IF NOT EXISTS envelopes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    sender TEXT,
    sender_device INTEGER,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    UNIQUE (account_id, device_id, sender, client_id)
)
"""

SQLITE_TABLES = (
    """
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    identity BLOB,
    signed_prekey BLOB,
    last_resort_kem BLOB,
    PRIMARY KEY (account_id, device_id)
);
CREATE TABLE IF NOT EXISTS one_time_keys (
    account_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (account_id, device_id, kind, key_id)
);
"""
    + ENVELOPES_TABLE
    + """;
CREATE TABLE IF NOT EXISTS attachments (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    account_id INTEGER
);
CREATE TABLE IF NOT EXISTS prekey_handouts (
    target_account INTEGER NOT NULL,
    requester_account INTEGER NOT NULL,
    handed_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS device_lists (
    account_id INTEGER PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    body BLOB NOT NULL,
    published_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS link_mailboxes (
    id TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS link_messages (
    mailbox_id TEXT NOT NULL REFERENCES link_mailboxes (id) ON DELETE CASCADE,
    role INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (mailbox_id, role, idx)
);
"""
)

# Created after the columns they cover exist (see ADDED_COLUMNS).
SQLITE_INDEXES = """
CREATE INDEX IF NOT EXISTS envelopes_by_device ON envelopes (account_id, device_id, seq);
CREATE INDEX IF NOT EXISTS envelopes_by_age ON envelopes (created_at);
CREATE INDEX IF NOT EXISTS envelopes_by_mailbox_size ON envelopes (account_id, device_id, size);
CREATE UNIQUE INDEX IF NOT EXISTS sealed_envelopes_by_id
    ON envelopes (account_id, device_id, client_id) WHERE sender IS NULL;
CREATE INDEX IF NOT EXISTS attachments_by_account ON attachments (account_id, created_at);
CREATE INDEX IF NOT EXISTS prekey_handouts_by_target ON prekey_handouts (target_account, handed_at);
CREATE INDEX IF NOT EXISTS prekey_handouts_by_pair
    ON prekey_handouts (target_account, requester_account, handed_at);
CREATE INDEX IF NOT EXISTS link_mailboxes_by_expiry ON link_mailboxes (expires_at);
"""

# Columns added since the first release: CREATE TABLE IF NOT EXISTS leaves an older
# database's tables as they were. (table, column, type, backfill for existing rows)
ADDED_COLUMNS: tuple[tuple[str, str, str, str | None], ...] = (
    ("envelopes", "size", "INTEGER NOT NULL DEFAULT 0", "UPDATE envelopes SET size = LENGTH(body)"),
    ("attachments", "account_id", "INTEGER", None),
    # Sealed sender: the delivery token contacts present for sealed mail to this
    # device (NULL: none registered), and whether anyone may send it sealed mail.
    ("devices", "sealed_access", "BLOB", None),
    ("devices", "sealed_anyone", "INTEGER NOT NULL DEFAULT 0", None),
)
# Sealed envelopes keep no sender: an older database's NOT NULL on these columns goes.
NULLABLE_SENDER_COLUMNS = ("sender", "sender_device")


def _postgres_types(sql: str) -> str:
    return (
        sql.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
        .replace("BLOB", "BYTEA")
    )


POSTGRES_TABLES = _postgres_types(SQLITE_TABLES)
POSTGRES_INDEXES = _postgres_types(SQLITE_INDEXES)

PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# A WAL this large after a deletion is checkpointed at once rather than at the
# janitor's next round: it would otherwise keep many deleted bodies' old pages.
WAL_SCRUB_BYTES = 4 * 1024 * 1024
ATTACHMENT_WINDOW_MS = 86_400_000


def private_directory(path: Path) -> Path:
    """`path` as a directory only its owner can open, whatever the umask."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIRECTORY_MODE)
    # mkdir's mode passes through the umask, and an existing directory keeps its own.
    path.chmod(PRIVATE_DIRECTORY_MODE)
    return path


def private_file(path: Path) -> None:
    """Creates `path` (empty) if missing; either way only its owner may read it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
    try:
        os.fchmod(descriptor, PRIVATE_FILE_MODE)
    finally:
        os.close(descriptor)


def tighten(path: Path) -> None:
    """Owner-only mode for an existing file or directory (a symlink is left alone)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink():
            return
        path.chmod(PRIVATE_DIRECTORY_MODE if path.is_dir() else PRIVATE_FILE_MODE)


ONE_TIME_PREKEY = 1
ONE_TIME_KEM_PREKEY = 2
# What a push wake-up is about besides new mail (also a PostgreSQL NOTIFY's suffix).
DEVICE_LIST_EVENT = "list"
DEVICE_REMOVED_EVENT = "removed"
# A link mailbox's NOTIFY payload starts with this; a device's is two numbers.
LINK_NOTIFY_PREFIX = "link:"
# pg_advisory_xact_lock key that serialises opening link mailboxes (their count).
LINK_MAILBOX_LOCK = 4243


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class DeviceRow:
    account_id: int
    username: str
    device_id: int
    name: str
    revoked: bool


@dataclass(frozen=True)
class NewEnvelope:
    account_id: int
    device_id: int
    client_id: str
    # None for sealed mail: the relay does not know (and must not keep) who sent it.
    sender: str | None
    sender_device: int | None
    body: bytes
    created_at: int


@dataclass(frozen=True)
class MailboxQuota:
    """What one device's mailbox holds at most: envelopes, and their bodies' bytes."""

    envelopes: int
    bytes: int


@dataclass(frozen=True)
class HandoutLimits:
    """How many fetches of one account's bundle hand out one-time prekeys per window:
    to one requester, and to everyone together. Beyond them the bundle goes out
    without one-time keys, and sessions start on the signed and last-resort prekeys."""

    per_requester: int
    per_target: int
    window_ms: int


@dataclass(frozen=True)
class KeyFetch:
    bundles: list[dict[str, Any]]
    # None when one-time keys were handed out, else the limit that withheld them:
    # "requester" or "target".
    withheld: str | None
    # This fetch took the last handout an allowance had left for the window.
    allowance_used_up: bool


@dataclass(frozen=True)
class MailboxDepth:
    mailboxes: int
    envelopes: int
    bytes: int
    max_device_envelopes: int
    max_device_bytes: int


@dataclass(frozen=True)
class DeviceListPublish:
    # "published", "unchanged" (the same list again) or "stale" (not newer).
    outcome: str
    # The version stored now.
    version: int
    # The account's other active devices, to be told of a published list.
    others: list[int]


class QuotaExceeded(Exception):
    """A write would pass a per-account or per-device quota; nothing of it was stored."""

    def __init__(self, kind: str, limit: int, retry_after_ms: int = 0) -> None:
        super().__init__(f"the {kind} quota of {limit} is reached")
        self.kind = kind
        self.limit = limit
        self.retry_after_ms = retry_after_ms


class Connection(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...


class Storage:
    """Common operations; subclasses provide `transaction()` and the dialect."""

    dialect = "sqlite"
    unique_violation: tuple[type[BaseException], ...] = (sqlite3.IntegrityError,)

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def read(self) -> contextlib.AbstractContextManager[Any]:
        """A consistent read that takes no write lock (SQLite: its own connection)."""
        return self.transaction()

    def _sql(self, sql: str) -> str:
        return sql

    def run(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(self._sql(sql), tuple(params))

    def notify(self, conn: Any, account_id: int, device_id: int, event: str = "") -> None:
        """Cross-instance wake-up of a device's push connections: new mail, or
        `event` (DEVICE_LIST_EVENT, DEVICE_REMOVED_EVENT). SQLite runs one instance,
        so nothing to do."""

    def notify_link(self, conn: Any, mailbox_id: str) -> None:
        """Cross-instance wake-up of long polls on a link mailbox; as `notify`."""

    def close(self) -> None:
        pass

    def _lock_account(self, conn: Any, account_id: int) -> None:
        """Serialises the writes that count an account's rows before adding one, so
        two at once cannot both pass a quota. SQLite's writes are serial already."""
        if self.dialect == "postgres":
            self.run(conn, "SELECT id FROM accounts WHERE id = ? FOR UPDATE", (account_id,))

    def _lock_mailboxes(self, conn: Any, mailboxes: set[tuple[int, int]]) -> None:
        """Serialises the sends into one mailbox until commit. A push connection asks
        for `seq > last sent`; on PostgreSQL a seq is drawn at insert, so without this
        a send that drew 151 and committed after one that drew 152 was never pushed.
        Holding the mailbox's lock from before the insert until commit makes seqs
        commit in order per mailbox (and makes its quota exact). Sorted, so two
        fan-outs over the same mailboxes cannot deadlock. SQLite's writes are serial
        already."""
        if self.dialect != "postgres":
            return
        for account_id, device_id in sorted(mailboxes):
            # One bigint key; a collision of two mailboxes only serialises them.
            self.run(
                conn,
                "SELECT pg_advisory_xact_lock((?::bigint << 31) # ?::bigint)",
                (account_id, device_id),
            )

    def _content_deleted(self) -> None:
        """Envelope bodies were deleted; a backend that keeps old page images (SQLite's
        WAL) scrubs them soon after."""

    def scrub_deleted(self) -> bool:
        """Makes deleted content unreadable in the backend's files; True when done."""
        return True

    def _columns(self, conn: Any, table: str) -> set[str]:
        raise NotImplementedError

    def _migrate(self, conn: Any) -> None:
        for table, column, kind, backfill in ADDED_COLUMNS:
            if column in self._columns(conn, table):
                continue
            column_type = kind if self.dialect == "sqlite" else _postgres_types(kind)
            self.run(conn, f"ALTER TABLE {table} ADD COLUMN {column} {column_type}")
            if backfill:
                self.run(conn, backfill)
        self._allow_sealed(conn)

    def _allow_sealed(self, conn: Any) -> None:
        """Drops NOT NULL from the envelope sender columns of an older database."""
        if self.dialect == "postgres":
            for column in NULLABLE_SENDER_COLUMNS:
                self.run(conn, f"ALTER TABLE envelopes ALTER COLUMN {column} DROP NOT NULL")
            return
        rows = conn.execute("PRAGMA table_info(envelopes)").fetchall()
        if not any(str(r[1]) in NULLABLE_SENDER_COLUMNS and r[3] for r in rows):
            return
        # SQLite cannot drop a constraint: the table is rebuilt (indexes follow).
        conn.execute("ALTER TABLE envelopes RENAME TO envelopes_before_sealed")
        conn.execute(ENVELOPES_TABLE)
        conn.execute(
            "INSERT INTO envelopes (seq, account_id, device_id, client_id, sender,"
            " sender_device, body, created_at, size) SELECT seq, account_id, device_id,"
            " client_id, sender, sender_device, body, created_at, size"
            " FROM envelopes_before_sealed"
        )
        conn.execute("DROP TABLE envelopes_before_sealed")

    # ---- accounts -----------------------------------------------------------------
    def create_account(self, username: str, device_name: str, token: str, now: int) -> int:
        with self.transaction() as conn:
            row = self.run(
                conn,
                "INSERT INTO accounts (username, created_at) VALUES (?, ?) RETURNING id",
                (username, now),
            ).fetchone()
            account_id = int(row[0])
            self.run(
                conn,
                "INSERT INTO devices (account_id, device_id, name, token_hash, created_at)"
                " VALUES (?, 1, ?, ?, ?)",
                (account_id, device_name, token_hash(token), now),
            )
        return account_id

    def add_device(
        self, account_id: int, device_name: str, token: str, now: int, max_active: int
    ) -> int:
        """The new device's id; QuotaExceeded("device") if `max_active` are active."""
        with self.transaction() as conn:
            self._lock_account(conn, account_id)
            active = int(
                self.run(
                    conn,
                    "SELECT COUNT(*) FROM devices WHERE account_id = ? AND revoked = 0",
                    (account_id,),
                ).fetchone()[0]
            )
            if active >= max_active:
                raise QuotaExceeded("device", max_active)
            row = self.run(
                conn,
                "SELECT COALESCE(MAX(device_id), 0) + 1 FROM devices WHERE account_id = ?",
                (account_id,),
            ).fetchone()
            device_id = int(row[0])
            self.run(
                conn,
                "INSERT INTO devices (account_id, device_id, name, token_hash, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (account_id, device_id, device_name, token_hash(token), now),
            )
        return device_id

    def device_for_token(self, token: str) -> DeviceRow | None:
        with self.read() as conn:
            row = self.run(
                conn,
                "SELECT d.account_id, a.username, d.device_id, d.name, d.revoked FROM devices d"
                " JOIN accounts a ON a.id = d.account_id WHERE d.token_hash = ?",
                (token_hash(token),),
            ).fetchone()
        if row is None:
            return None
        return DeviceRow(int(row[0]), str(row[1]), int(row[2]), str(row[3]), bool(row[4]))

    def account_id(self, username: str) -> int | None:
        with self.read() as conn:
            row = self.run(
                conn, "SELECT id FROM accounts WHERE username = ?", (username,)
            ).fetchone()
        return int(row[0]) if row else None

    def rename_device(self, account_id: int, device_id: int, name: str) -> bool:
        """Replaces an active device's stored name; False if there is none."""
        with self.transaction() as conn:
            cursor = self.run(
                conn,
                "UPDATE devices SET name = ? WHERE account_id = ? AND device_id = ?"
                " AND revoked = 0",
                (name, account_id, device_id),
            )
            renamed = bool(cursor.rowcount)
        # The old name (perhaps in the clear) goes from the WAL at the next scrub.
        self._content_deleted()
        return renamed

    def devices(self, account_id: int) -> list[tuple[int, str, bool]]:
        with self.read() as conn:
            rows = self.run(
                conn,
                "SELECT device_id, name, revoked FROM devices WHERE account_id = ?"
                " ORDER BY device_id",
                (account_id,),
            ).fetchall()
        return [(int(r[0]), str(r[1]), bool(r[2])) for r in rows]

    def revoke_device(self, account_id: int, device_id: int) -> bool:
        with self.transaction() as conn:
            cursor = self.run(
                conn,
                "UPDATE devices SET revoked = 1, identity = NULL, signed_prekey = NULL,"
                " last_resort_kem = NULL WHERE account_id = ? AND device_id = ? AND revoked = 0",
                (account_id, device_id),
            )
            changed = bool(cursor.rowcount > 0)
            self.run(
                conn,
                "DELETE FROM one_time_keys WHERE account_id = ? AND device_id = ?",
                (account_id, device_id),
            )
            self.run(
                conn,
                "DELETE FROM envelopes WHERE account_id = ? AND device_id = ?",
                (account_id, device_id),
            )
            if changed:
                # Its push connections, on whichever instance, close at once.
                self.notify(conn, account_id, device_id, DEVICE_REMOVED_EVENT)
        self._content_deleted()
        return changed

    # ---- prekeys ------------------------------------------------------------------
    def upload_keys(  # noqa: PLR0917
        self,
        account_id: int,
        device_id: int,
        identity: bytes | None,
        signed_prekey: bytes | None,
        last_resort: bytes | None,
        one_time: list[tuple[int, bytes]],
        one_time_kem: list[tuple[int, bytes]],
        max_one_time: int,
    ) -> tuple[int, int] | None:
        """Returns the stock after the upload, or None if the identity would change.

        QuotaExceeded("prekey") when either kind's stock would pass `max_one_time`;
        then nothing of the upload is stored."""
        with self.transaction() as conn:
            row = self.run(
                conn,
                "SELECT identity FROM devices WHERE account_id = ? AND device_id = ?",
                (account_id, device_id),
            ).fetchone()
            current = bytes(row[0]) if row and row[0] is not None else None
            if identity is not None and current is not None and current != identity:
                return None
            if identity is not None and current is None:
                self.run(
                    conn,
                    "UPDATE devices SET identity = ? WHERE account_id = ? AND device_id = ?",
                    (identity, account_id, device_id),
                )
            if signed_prekey is not None:
                self.run(
                    conn,
                    "UPDATE devices SET signed_prekey = ? WHERE account_id = ? AND device_id = ?",
                    (signed_prekey, account_id, device_id),
                )
            if last_resort is not None:
                self.run(
                    conn,
                    "UPDATE devices SET last_resort_kem = ? WHERE account_id = ? AND device_id = ?",
                    (last_resort, account_id, device_id),
                )
            for kind, keys in ((ONE_TIME_PREKEY, one_time), (ONE_TIME_KEM_PREKEY, one_time_kem)):
                for key_id, blob in keys:
                    self.run(
                        conn,
                        "INSERT INTO one_time_keys (account_id, device_id, kind, key_id, blob)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                        (account_id, device_id, kind, key_id, blob),
                    )
            # Counted after the inserts, so re-uploaded ids (which store nothing) do
            # not count twice; raising rolls the whole upload back.
            stock = self._stock(conn, account_id, device_id)
            if max(stock) > max_one_time:
                raise QuotaExceeded("prekey", max_one_time)
            return stock

    def _stock(self, conn: Any, account_id: int, device_id: int) -> tuple[int, int]:
        rows = self.run(
            conn,
            "SELECT kind, COUNT(*) FROM one_time_keys WHERE account_id = ? AND device_id = ?"
            " GROUP BY kind",
            (account_id, device_id),
        ).fetchall()
        counts = {int(r[0]): int(r[1]) for r in rows}
        return counts.get(ONE_TIME_PREKEY, 0), counts.get(ONE_TIME_KEM_PREKEY, 0)

    def stock(self, account_id: int, device_id: int) -> tuple[int, int]:
        with self.read() as conn:
            return self._stock(conn, account_id, device_id)

    def _take_one_time(
        self, conn: Any, account_id: int, device_id: int, kind: int
    ) -> tuple[int, bytes] | None:
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgres" else ""
        row = self.run(
            conn,
            "DELETE FROM one_time_keys WHERE (account_id, device_id, kind, key_id) IN ("  # noqa: S608
            " SELECT account_id, device_id, kind, key_id FROM one_time_keys"
            " WHERE account_id = ? AND device_id = ? AND kind = ? ORDER BY key_id LIMIT 1"
            f"{lock}) RETURNING key_id, blob",
            (account_id, device_id, kind),
        ).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    def _handouts(self, conn: Any, target: int, requester: int | None, since: int) -> int:
        if requester is None:
            sql = "SELECT COUNT(*) FROM prekey_handouts WHERE target_account = ? AND handed_at >= ?"
            params: tuple[int, ...] = (target, since)
        else:
            sql = (
                "SELECT COUNT(*) FROM prekey_handouts WHERE target_account = ?"
                " AND requester_account = ? AND handed_at >= ?"
            )
            params = (target, requester, since)
        return int(self.run(conn, sql, params).fetchone()[0])

    def fetch_bundles(
        self, account_id: int, requester: int, now: int, limits: HandoutLimits
    ) -> KeyFetch:
        """Every active device's keys, consuming one one-time key of each kind per
        device, unless `requester`'s or everyone's handouts of this account in the
        window have reached `limits`: then without one-time keys."""
        bundles: list[dict[str, Any]] = []
        with self.transaction() as conn:
            self._lock_account(conn, account_id)
            rows = self.run(
                conn,
                "SELECT device_id, identity, signed_prekey, last_resort_kem FROM devices"
                " WHERE account_id = ? AND revoked = 0 AND identity IS NOT NULL"
                " AND signed_prekey IS NOT NULL AND last_resort_kem IS NOT NULL"
                " ORDER BY device_id",
                (account_id,),
            ).fetchall()
            if not rows:
                return KeyFetch([], None, allowance_used_up=False)
            since = now - limits.window_ms
            withheld: str | None = None
            used_up = False
            by_requester = self._handouts(conn, account_id, requester, since)
            if by_requester >= limits.per_requester:
                withheld = "requester"
            else:
                by_everyone = self._handouts(conn, account_id, None, since)
                if by_everyone >= limits.per_target:
                    withheld = "target"
                else:
                    self.run(
                        conn,
                        "INSERT INTO prekey_handouts (target_account, requester_account,"
                        " handed_at) VALUES (?, ?, ?)",
                        (account_id, requester, now),
                    )
                    used_up = (
                        by_requester + 1 >= limits.per_requester
                        or by_everyone + 1 >= limits.per_target
                    )
            for row in rows:
                device_id = int(row[0])
                handing_out = withheld is None
                bundles.append(
                    {
                        "device_id": device_id,
                        "identity": bytes(row[1]),
                        "signed_prekey": bytes(row[2]),
                        "last_resort_kem_prekey": bytes(row[3]),
                        "one_time_prekey": self._take_one_time(
                            conn, account_id, device_id, ONE_TIME_PREKEY
                        )
                        if handing_out
                        else None,
                        "one_time_kem_prekey": self._take_one_time(
                            conn, account_id, device_id, ONE_TIME_KEM_PREKEY
                        )
                        if handing_out
                        else None,
                    }
                )
        return KeyFetch(bundles, withheld, allowance_used_up=used_up)

    def purge_handouts(self, older_than: int) -> int:
        with self.transaction() as conn:
            cursor = self.run(
                conn, "DELETE FROM prekey_handouts WHERE handed_at < ?", (older_than,)
            )
            return max(int(cursor.rowcount), 0)

    # ---- mailbox --------------------------------------------------------------
    def active_device(self, account_id: int, device_id: int) -> bool:
        with self.read() as conn:
            row = self.run(
                conn,
                "SELECT 1 FROM devices WHERE account_id = ? AND device_id = ? AND revoked = 0",
                (account_id, device_id),
            ).fetchone()
        return row is not None

    def device_identity(self, account_id: int, device_id: int) -> bytes | None:
        """The identity key an active device published, if any."""
        with self.read() as conn:
            row = self.run(
                conn,
                "SELECT identity FROM devices WHERE account_id = ? AND device_id = ?"
                " AND revoked = 0",
                (account_id, device_id),
            ).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def set_sealed_access(
        self, account_id: int, device_id: int, access_key: bytes | None, anyone: bool
    ) -> None:
        with self.transaction() as conn:
            self.run(
                conn,
                "UPDATE devices SET sealed_access = ?, sealed_anyone = ?"
                " WHERE account_id = ? AND device_id = ?",
                (access_key, 1 if anyone else 0, account_id, device_id),
            )

    def sealed_access(self, account_id: int, device_id: int) -> tuple[bytes | None, bool] | None:
        """(delivery token, allow anyone) of an active device; None if there is none."""
        with self.read() as conn:
            row = self.run(
                conn,
                "SELECT sealed_access, sealed_anyone FROM devices"
                " WHERE account_id = ? AND device_id = ? AND revoked = 0",
                (account_id, device_id),
            ).fetchone()
        if row is None:
            return None
        return (None if row[0] is None else bytes(row[0])), bool(row[1])

    def enqueue(self, envelopes: Sequence[NewEnvelope], quota: MailboxQuota) -> list[str]:
        """Per envelope 'queued', 'duplicate', 'quota' (the mailbox holds its most
        envelopes) or 'quota_bytes' (its most bytes); one transaction for all."""
        with self.transaction() as conn:
            return self.enqueue_in(conn, envelopes, quota)

    def enqueue_group(
        self, sends: Sequence[tuple[Sequence[NewEnvelope], MailboxQuota]]
    ) -> list[list[str] | Exception]:
        """Several requests' sends in one transaction (one fsync), each with its outcome.

        If the shared transaction fails, each send is retried alone, so one request's
        failure never fails the neighbours it was grouped with.
        """
        try:
            with self.transaction() as conn:
                return [self.enqueue_in(conn, envelopes, quota) for envelopes, quota in sends]
        except Exception as error:  # noqa: BLE001 - handed back to its own request
            if len(sends) == 1:
                return [error]
        outcomes: list[list[str] | Exception] = []
        for envelopes, quota in sends:
            outcomes += self.enqueue_group([(envelopes, quota)])
        return outcomes

    def enqueue_in(
        self, conn: Any, envelopes: Sequence[NewEnvelope], quota: MailboxQuota
    ) -> list[str]:
        # Per mailbox: [envelopes waiting, their bytes], read once per transaction
        # from the covering (account, device, size) index, then kept up to date here.
        waiting: dict[tuple[int, int], list[int]] = {}
        statuses: list[str] = []
        self._lock_mailboxes(conn, {(e.account_id, e.device_id) for e in envelopes})
        for envelope in envelopes:
            mailbox = (envelope.account_id, envelope.device_id)
            if mailbox not in waiting:
                row = self.run(
                    conn,
                    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM envelopes"
                    " WHERE account_id = ? AND device_id = ?",
                    mailbox,
                ).fetchone()
                waiting[mailbox] = [int(row[0]), int(row[1])]
            count, size = waiting[mailbox]
            refusal = None
            if count >= quota.envelopes:
                refusal = "quota"
            elif size + len(envelope.body) > quota.bytes:
                refusal = "quota_bytes"
            if refusal is not None:
                # A retry of something already queued is still a duplicate, not a refusal.
                statuses.append("duplicate" if self._queued(conn, envelope) else refusal)
                continue
            inserted = self.run(
                conn,
                "INSERT INTO envelopes (account_id, device_id, client_id, sender, sender_device,"
                " body, created_at, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    envelope.account_id,
                    envelope.device_id,
                    envelope.client_id,
                    envelope.sender,
                    envelope.sender_device,
                    envelope.body,
                    envelope.created_at,
                    len(envelope.body),
                ),
            ).rowcount
            if inserted:
                waiting[mailbox] = [count + 1, size + len(envelope.body)]
                statuses.append("queued")
            else:
                statuses.append("duplicate")
        woken = {
            (e.account_id, e.device_id): None
            for e, status in zip(envelopes, statuses, strict=True)
            if status == "queued"
        }
        for mailbox in woken:
            self.notify(conn, *mailbox)
        return statuses

    def _queued(self, conn: Any, envelope: NewEnvelope) -> bool:
        if envelope.sender is None:
            sql = (
                "SELECT 1 FROM envelopes WHERE account_id = ? AND device_id = ?"
                " AND sender IS NULL AND client_id = ?"
            )
            params: tuple[Any, ...] = (envelope.account_id, envelope.device_id, envelope.client_id)
        else:
            sql = (
                "SELECT 1 FROM envelopes WHERE account_id = ? AND device_id = ? AND sender = ?"
                " AND client_id = ?"
            )
            params = (envelope.account_id, envelope.device_id, envelope.sender, envelope.client_id)
        return self.run(conn, sql, params).fetchone() is not None

    def pending(
        self, account_id: int, device_id: int, after: int, limit: int, min_created: int
    ) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = self.run(
                conn,
                "SELECT seq, client_id, sender, sender_device, body, created_at FROM envelopes"
                " WHERE account_id = ? AND device_id = ? AND seq > ? AND created_at >= ?"
                " ORDER BY seq LIMIT ?",
                (account_id, device_id, after, min_created, limit),
            ).fetchall()
        return [
            {
                "seq": int(r[0]),
                "id": str(r[1]),
                "sender": None if r[2] is None else str(r[2]),
                "sender_device": None if r[3] is None else int(r[3]),
                "body": bytes(r[4]),
                "server_time": int(r[5]),
            }
            for r in rows
        ]

    def ack(self, account_id: int, device_id: int, seqs: list[int]) -> int:
        with self.transaction() as conn:
            removed = 0
            for seq in seqs:
                cursor = self.run(
                    conn,
                    "DELETE FROM envelopes WHERE account_id = ? AND device_id = ? AND seq = ?",
                    (account_id, device_id, seq),
                )
                removed += max(cursor.rowcount, 0)
        if removed:
            self._content_deleted()
        return removed

    def purge(self, older_than: int) -> int:
        with self.transaction() as conn:
            cursor = self.run(conn, "DELETE FROM envelopes WHERE created_at < ?", (older_than,))
            removed = max(int(cursor.rowcount), 0)
        if removed:
            self._content_deleted()
        return removed

    def mailbox_depth(self) -> MailboxDepth:
        """Pending envelopes and bytes, in all and in the fullest device's mailbox:
        read from the covering (account, device, size) index, not the bodies."""
        with self.read() as conn:
            row = self.run(
                conn,
                "SELECT COUNT(*), COALESCE(SUM(n), 0), COALESCE(SUM(b), 0),"
                " COALESCE(MAX(n), 0), COALESCE(MAX(b), 0) FROM ("
                " SELECT COUNT(*) AS n, SUM(size) AS b FROM envelopes"
                " GROUP BY account_id, device_id) AS mailboxes",
            ).fetchone()
        return MailboxDepth(*(int(value) for value in row))

    # ---- device lists (docs/protocol.md §13) ------------------------------------
    def publish_device_list(
        self, account_id: int, publisher: int, version: int, body: bytes, now: int
    ) -> DeviceListPublish:
        """Stores `body` as the account's list if `version` is newer than the one
        stored. The same list again is `unchanged` (a retried publish), any other
        list under a version not newer is `stale`, and nothing is stored."""
        with self.transaction() as conn:
            self._lock_account(conn, account_id)
            row = self.run(
                conn,
                "SELECT version, body FROM device_lists WHERE account_id = ?",
                (account_id,),
            ).fetchone()
            if row is not None:
                stored_version, stored_body = int(row[0]), bytes(row[1])
                if stored_version == version and stored_body == body:
                    return DeviceListPublish("unchanged", version, [])
                if version <= stored_version:
                    return DeviceListPublish("stale", stored_version, [])
                self.run(
                    conn,
                    "UPDATE device_lists SET version = ?, body = ?, published_at = ?"
                    " WHERE account_id = ?",
                    (version, body, now, account_id),
                )
            else:
                self.run(
                    conn,
                    "INSERT INTO device_lists (account_id, version, body, published_at)"
                    " VALUES (?, ?, ?, ?)",
                    (account_id, version, body, now),
                )
            others = [
                int(r[0])
                for r in self.run(
                    conn,
                    "SELECT device_id FROM devices WHERE account_id = ? AND revoked = 0"
                    " AND device_id <> ? ORDER BY device_id",
                    (account_id, publisher),
                ).fetchall()
            ]
            for device_id in others:
                self.notify(conn, account_id, device_id, DEVICE_LIST_EVENT)
        return DeviceListPublish("published", version, others)

    def device_list(self, account_id: int) -> tuple[int, bytes] | None:
        """(version, signed list) the account last published, if any."""
        with self.read() as conn:
            row = self.run(
                conn,
                "SELECT version, body FROM device_lists WHERE account_id = ?",
                (account_id,),
            ).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    # ---- link mailboxes (docs/relay-api.md, "Linking a device") ---------------
    def open_link_mailbox(
        self, mailbox_id: str, public_key: bytes, now: int, expires_at: int, max_open: int
    ) -> bool:
        """False if `mailbox_id` is taken (the caller draws another);
        QuotaExceeded("link_mailboxes") if `max_open` are open."""
        with self.transaction() as conn:
            if self.dialect == "postgres":
                # Makes the count and the insert one step across instances.
                self.run(conn, "SELECT pg_advisory_xact_lock(?)", (LINK_MAILBOX_LOCK,))
            taken = self.run(
                conn, "SELECT 1 FROM link_mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if taken is not None:
                return False
            open_now = int(
                self.run(
                    conn, "SELECT COUNT(*) FROM link_mailboxes WHERE expires_at > ?", (now,)
                ).fetchone()[0]
            )
            if open_now >= max_open:
                raise QuotaExceeded("link_mailboxes", max_open)
            self.run(
                conn,
                "INSERT INTO link_mailboxes (id, public_key, created_at, expires_at)"
                " VALUES (?, ?, ?, ?)",
                (mailbox_id, public_key, now, expires_at),
            )
        return True

    def link_mailbox(self, mailbox_id: str, now: int) -> tuple[bytes, int] | None:
        """(public key, expires at) of an open mailbox; None if none or expired."""
        with self.read() as conn:
            row = self.run(
                conn,
                "SELECT public_key, expires_at FROM link_mailboxes WHERE id = ? AND expires_at > ?",
                (mailbox_id, now),
            ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))

    def post_link_message(
        self, mailbox_id: str, role: int, body: bytes, now: int, max_messages: int
    ) -> int | None:
        """The new message's index (from 0, per role); None if the mailbox is not
        open; QuotaExceeded("link_messages") once the role has `max_messages`."""
        lock = " FOR UPDATE" if self.dialect == "postgres" else ""
        with self.transaction() as conn:
            # Locked so two posts at once cannot draw the same index.
            row = self.run(
                conn,
                f"SELECT 1 FROM link_mailboxes WHERE id = ? AND expires_at > ?{lock}",  # noqa: S608
                (mailbox_id, now),
            ).fetchone()
            if row is None:
                return None
            count = int(
                self.run(
                    conn,
                    "SELECT COUNT(*) FROM link_messages WHERE mailbox_id = ? AND role = ?",
                    (mailbox_id, role),
                ).fetchone()[0]
            )
            if count >= max_messages:
                raise QuotaExceeded("link_messages", max_messages)
            self.run(
                conn,
                "INSERT INTO link_messages (mailbox_id, role, idx, body) VALUES (?, ?, ?, ?)",
                (mailbox_id, role, count, body),
            )
            self.notify_link(conn, mailbox_id)
        return count

    def link_messages(
        self, mailbox_id: str, role: int, after: int, now: int
    ) -> list[tuple[int, bytes]] | None:
        """A role's messages with index > `after`; None if the mailbox is not open."""
        with self.read() as conn:
            row = self.run(
                conn,
                "SELECT 1 FROM link_mailboxes WHERE id = ? AND expires_at > ?",
                (mailbox_id, now),
            ).fetchone()
            if row is None:
                return None
            rows = self.run(
                conn,
                "SELECT idx, body FROM link_messages WHERE mailbox_id = ? AND role = ?"
                " AND idx > ? ORDER BY idx",
                (mailbox_id, role, after),
            ).fetchall()
        return [(int(r[0]), bytes(r[1])) for r in rows]

    def close_link_mailbox(self, mailbox_id: str, now: int) -> bool:
        """Deletes the mailbox and its messages; True if it was open."""
        with self.transaction() as conn:
            self.run(conn, "DELETE FROM link_messages WHERE mailbox_id = ?", (mailbox_id,))
            row = self.run(
                conn,
                "DELETE FROM link_mailboxes WHERE id = ? RETURNING expires_at",
                (mailbox_id,),
            ).fetchone()
            if row is not None:
                self.notify_link(conn, mailbox_id)
        self._content_deleted()
        return row is not None and int(row[0]) > now

    def sweep_link_mailboxes(self, now: int) -> int:
        """Deletes expired mailboxes and their messages; how many mailboxes went."""
        with self.transaction() as conn:
            self.run(
                conn,
                "DELETE FROM link_messages WHERE mailbox_id IN"
                " (SELECT id FROM link_mailboxes WHERE expires_at <= ?)",
                (now,),
            )
            removed = max(
                int(
                    self.run(
                        conn, "DELETE FROM link_mailboxes WHERE expires_at <= ?", (now,)
                    ).rowcount
                ),
                0,
            )
        if removed:
            self._content_deleted()
        return removed

    def open_link_mailboxes(self, now: int) -> int:
        with self.read() as conn:
            row = self.run(
                conn, "SELECT COUNT(*) FROM link_mailboxes WHERE expires_at > ?", (now,)
            ).fetchone()
        return int(row[0])

    # ---- attachments ----------------------------------------------------------
    def _attachment_bytes(self, conn: Any, account_id: int, since: int) -> int:
        """Bytes uploaded after `since`: an upload counts for 24 hours to the
        millisecond, so it has left the window exactly when Retry-After says."""
        row = self.run(
            conn,
            "SELECT COALESCE(SUM(size), 0) FROM attachments WHERE account_id = ?"
            " AND created_at > ?",
            (account_id, since),
        ).fetchone()
        return int(row[0])

    def _attachment_wait(self, conn: Any, account_id: int, now: int, excess: int) -> int:
        """Milliseconds until uploads of `excess` bytes have left the 24-hour window."""
        row = self.run(
            conn,
            "SELECT created_at FROM ("
            " SELECT created_at, SUM(size) OVER (ORDER BY created_at, id) AS freed"
            " FROM attachments WHERE account_id = ? AND created_at > ?) AS past"
            " WHERE freed >= ? ORDER BY created_at LIMIT 1",
            (account_id, now - ATTACHMENT_WINDOW_MS, excess),
        ).fetchone()
        if row is None:  # even the whole window's uploads are not enough
            return ATTACHMENT_WINDOW_MS
        return max(int(row[0]) + ATTACHMENT_WINDOW_MS - now, 1)

    def attachment_allowance(
        self, account_id: int, now: int, daily_bytes: int, wanted: int
    ) -> tuple[int, int]:
        """(bytes the account may still upload in the current 24-hour window,
        milliseconds until `wanted` more bytes would fit, 0 if they fit now)."""
        with self.read() as conn:
            used = self._attachment_bytes(conn, account_id, now - ATTACHMENT_WINDOW_MS)
            excess = used + wanted - daily_bytes
            wait = self._attachment_wait(conn, account_id, now, excess) if excess > 0 else 0
        return daily_bytes - used, wait

    def add_attachment(
        self, blob_id: str, size: int, now: int, account_id: int, daily_bytes: int
    ) -> None:
        """QuotaExceeded("attachment") when the account's uploads in the past 24 hours
        and this one together pass `daily_bytes`; then nothing is recorded."""
        with self.transaction() as conn:
            self._lock_account(conn, account_id)
            used = self._attachment_bytes(conn, account_id, now - ATTACHMENT_WINDOW_MS)
            if used + size > daily_bytes:
                wait = self._attachment_wait(conn, account_id, now, used + size - daily_bytes)
                raise QuotaExceeded("attachment", daily_bytes, retry_after_ms=wait)
            self.run(
                conn,
                "INSERT INTO attachments (id, size, created_at, account_id) VALUES (?, ?, ?, ?)",
                (blob_id, size, now, account_id),
            )

    def attachment(self, blob_id: str) -> tuple[int, int] | None:
        with self.read() as conn:
            row = self.run(
                conn, "SELECT size, created_at FROM attachments WHERE id = ?", (blob_id,)
            ).fetchone()
        return (int(row[0]), int(row[1])) if row else None

    def expired_attachments(self, older_than: int) -> list[str]:
        with self.transaction() as conn:
            rows = self.run(
                conn,
                "DELETE FROM attachments WHERE created_at < ? RETURNING id",
                (older_than,),
            ).fetchall()
        return [str(r[0]) for r in rows]


class SqliteStorage(Storage):
    def __init__(self, path: Path) -> None:
        # Created owner-only before SQLite opens it: SQLite gives the WAL and SHM it
        # creates the database file's mode. Files from an older start are tightened.
        private_file(path)
        for companion in ("-wal", "-shm", "-journal"):
            tighten(path.with_name(path.name + companion))
        self._connection = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._lock = threading.RLock()
        self._connection.execute("PRAGMA journal_mode = WAL")
        self._connection.execute("PRAGMA synchronous = FULL")
        self._connection.execute("PRAGMA foreign_keys = ON")
        # Deleted rows (acknowledged and expired envelopes) are overwritten with
        # zeros instead of lingering in free space; all deletes go through this
        # connection. scrub_deleted() then takes their old images out of the WAL.
        self._connection.execute("PRAGMA secure_delete = ON")
        self._connection.executescript(SQLITE_TABLES)
        self._path = path
        self._wal = path.with_name(path.name + "-wal")
        self._scrub_wanted = False
        with self.transaction() as conn:
            self._migrate(conn)
        self._connection.executescript(SQLITE_INDEXES)
        self._readers = threading.local()
        self._readers_lock = threading.Lock()
        self._all_readers: list[sqlite3.Connection] = []

    def _columns(self, conn: Any, table: str) -> set[str]:
        return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        # One writer at a time is what SQLite offers anyway; the lock keeps the
        # shared connection's transactions from interleaving across threads.
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        # WAL lets readers work beside the writer; each pool thread keeps its own
        # connection, so a read never waits for another request's fsync.
        reader = getattr(self._readers, "conn", None)
        if reader is None:
            reader = sqlite3.connect(
                str(self._path), isolation_level=None, timeout=30, check_same_thread=False
            )
            self._readers.conn = reader
            with self._readers_lock:
                self._all_readers.append(reader)
        reader.execute("BEGIN")
        try:
            yield reader
        finally:
            reader.execute("COMMIT")

    def _content_deleted(self) -> None:
        self._scrub_wanted = True
        try:
            large = self._wal.stat().st_size > WAL_SCRUB_BYTES
        except FileNotFoundError:
            large = False
        if large:
            self.scrub_deleted()

    def scrub_deleted(self) -> bool:
        """Checkpoints the WAL into the database and truncates it: secure_delete has
        zeroed the deleted rows in the current pages, but the WAL still holds the
        pages as they were until then. False if a reader kept it from finishing
        (the next call tries again)."""
        with self._lock:
            if not self._scrub_wanted:
                return True
            self._scrub_wanted = False
            busy, _frames, _copied = self._connection.execute(
                "PRAGMA wal_checkpoint(TRUNCATE)"
            ).fetchone()
            if busy:
                self._scrub_wanted = True
            return not busy

    def close(self) -> None:
        with self._readers_lock:
            for reader in self._all_readers:
                with contextlib.suppress(sqlite3.Error):
                    reader.close()
        self._connection.close()


class PostgresStorage(Storage):
    dialect = "postgres"
    CHANNEL = "cipherline_mailbox"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.unique_violation = (psycopg.errors.UniqueViolation,)
        self._dsn = dsn
        self._local = threading.local()
        self._all: list[Any] = []
        self._all_lock = threading.Lock()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(4242)")
            for statement in POSTGRES_TABLES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            self._migrate(conn)
            for statement in POSTGRES_INDEXES.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("SELECT pg_advisory_unlock(4242)")

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _columns(self, conn: Any, table: str) -> set[str]:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        ).fetchall()
        return {str(row[0]) for row in rows}

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self._dsn)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        conn = self._connection()
        with conn.transaction():
            yield conn

    def notify(self, conn: Any, account_id: int, device_id: int, event: str = "") -> None:
        payload = f"{account_id}:{device_id}" + (f":{event}" if event else "")
        conn.execute("SELECT pg_notify(%s, %s)", (self.CHANNEL, payload))

    def notify_link(self, conn: Any, mailbox_id: str) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (self.CHANNEL, LINK_NOTIFY_PREFIX + mailbox_id))

    def listen(self, callback: Callable[[str], None], stop: threading.Event) -> None:
        """Blocks, calling `callback(payload)` for every NOTIFY: "account:device",
        "account:device:event", or LINK_NOTIFY_PREFIX + a link mailbox id."""
        while not stop.is_set():
            try:
                with self._psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    while not stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            callback(note.payload)
            except self._psycopg.OperationalError:
                stop.wait(1.0)

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                with contextlib.suppress(Exception):
                    conn.close()


def open_storage(data_dir: Path, database_url: str | None) -> Storage:
    if database_url:
        return PostgresStorage(database_url)
    return SqliteStorage(data_dir / "relay.sqlite3")
