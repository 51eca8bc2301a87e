"""The relay's storage: one interface, SQLite (default) and PostgreSQL.

SQL is written once with `?` placeholders; the PostgreSQL backend rewrites them
to `%s`. Each backend hands out a connection inside `transaction()`; everything
that must be atomic (consuming a one-time prekey, idempotent sends) happens in one.
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

SQLITE_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS envelopes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL,
    device_id INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_device INTEGER NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (account_id, device_id, sender, client_id)
);
CREATE INDEX IF NOT EXISTS envelopes_by_device ON envelopes (account_id, device_id, seq);
CREATE INDEX IF NOT EXISTS envelopes_by_age ON envelopes (created_at);
CREATE TABLE IF NOT EXISTS attachments (
    id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
"""

POSTGRES_SCHEMA = (
    SQLITE_SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    .replace("INTEGER", "BIGINT")
    .replace("BLOB", "BYTEA")
)

ONE_TIME_PREKEY = 1
ONE_TIME_KEM_PREKEY = 2


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
    sender: str
    sender_device: int
    body: bytes
    created_at: int


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

    def notify(self, conn: Any, account_id: int, device_id: int) -> None:
        """Cross-instance wake-up; SQLite runs one instance, so nothing to do."""

    def close(self) -> None:
        pass

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

    def add_device(self, account_id: int, device_name: str, token: str, now: int) -> int:
        with self.transaction() as conn:
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
    ) -> tuple[int, int] | None:
        """Returns the stock after the upload, or None if the identity would change."""
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
            return self._stock(conn, account_id, device_id)

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

    def fetch_bundles(self, account_id: int) -> list[dict[str, Any]]:
        """Every active device's keys, consuming one one-time key of each kind."""
        bundles: list[dict[str, Any]] = []
        with self.transaction() as conn:
            rows = self.run(
                conn,
                "SELECT device_id, identity, signed_prekey, last_resort_kem FROM devices"
                " WHERE account_id = ? AND revoked = 0 AND identity IS NOT NULL"
                " AND signed_prekey IS NOT NULL AND last_resort_kem IS NOT NULL"
                " ORDER BY device_id",
                (account_id,),
            ).fetchall()
            for row in rows:
                device_id = int(row[0])
                bundles.append(
                    {
                        "device_id": device_id,
                        "identity": bytes(row[1]),
                        "signed_prekey": bytes(row[2]),
                        "last_resort_kem_prekey": bytes(row[3]),
                        "one_time_prekey": self._take_one_time(
                            conn, account_id, device_id, ONE_TIME_PREKEY
                        ),
                        "one_time_kem_prekey": self._take_one_time(
                            conn, account_id, device_id, ONE_TIME_KEM_PREKEY
                        ),
                    }
                )
        return bundles

    # ---- mailbox --------------------------------------------------------------
    def active_device(self, account_id: int, device_id: int) -> bool:
        with self.read() as conn:
            row = self.run(
                conn,
                "SELECT 1 FROM devices WHERE account_id = ? AND device_id = ? AND revoked = 0",
                (account_id, device_id),
            ).fetchone()
        return row is not None

    def enqueue(self, envelopes: Sequence[NewEnvelope], quota: int) -> list[str]:
        """Per envelope 'queued', 'duplicate' or 'quota'; one transaction for all."""
        with self.transaction() as conn:
            return self.enqueue_in(conn, envelopes, quota)

    def enqueue_group(
        self, sends: Sequence[tuple[Sequence[NewEnvelope], int]]
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

    def enqueue_in(self, conn: Any, envelopes: Sequence[NewEnvelope], quota: int) -> list[str]:
        waiting: dict[tuple[int, int], int] = {}
        statuses: list[str] = []
        for envelope in envelopes:
            mailbox = (envelope.account_id, envelope.device_id)
            if mailbox not in waiting:
                waiting[mailbox] = int(
                    self.run(
                        conn,
                        "SELECT COUNT(*) FROM envelopes WHERE account_id = ? AND device_id = ?",
                        mailbox,
                    ).fetchone()[0]
                )
            if waiting[mailbox] >= quota:
                # A retry of something already queued is still a duplicate, not a 429.
                statuses.append("duplicate" if self._queued(conn, envelope) else "quota")
                continue
            inserted = self.run(
                conn,
                "INSERT INTO envelopes (account_id, device_id, client_id, sender, sender_device,"
                " body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    envelope.account_id,
                    envelope.device_id,
                    envelope.client_id,
                    envelope.sender,
                    envelope.sender_device,
                    envelope.body,
                    envelope.created_at,
                ),
            ).rowcount
            if inserted:
                waiting[mailbox] += 1
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
        return (
            self.run(
                conn,
                "SELECT 1 FROM envelopes WHERE account_id = ? AND device_id = ? AND sender = ?"
                " AND client_id = ?",
                (envelope.account_id, envelope.device_id, envelope.sender, envelope.client_id),
            ).fetchone()
            is not None
        )

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
                "sender": str(r[2]),
                "sender_device": int(r[3]),
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
        return removed

    def purge(self, older_than: int) -> int:
        with self.transaction() as conn:
            cursor = self.run(conn, "DELETE FROM envelopes WHERE created_at < ?", (older_than,))
            return max(int(cursor.rowcount), 0)

    # ---- attachments ----------------------------------------------------------
    def add_attachment(self, blob_id: str, size: int, now: int) -> None:
        with self.transaction() as conn:
            self.run(
                conn,
                "INSERT INTO attachments (id, size, created_at) VALUES (?, ?, ?)",
                (blob_id, size, now),
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
        self._connection = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._lock = threading.RLock()
        self._connection.execute("PRAGMA journal_mode = WAL")
        self._connection.execute("PRAGMA synchronous = FULL")
        self._connection.execute("PRAGMA foreign_keys = ON")
        self._connection.executescript(SQLITE_SCHEMA)
        self._path = path
        self._readers = threading.local()
        self._readers_lock = threading.Lock()
        self._all_readers: list[sqlite3.Connection] = []

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
            for statement in POSTGRES_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("SELECT pg_advisory_unlock(4242)")

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

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

    def notify(self, conn: Any, account_id: int, device_id: int) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (self.CHANNEL, f"{account_id}:{device_id}"))

    def listen(self, callback: Any, stop: threading.Event) -> None:
        """Blocks, calling `callback(account_id, device_id)` for every NOTIFY."""
        while not stop.is_set():
            try:
                with self._psycopg.connect(self._dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {self.CHANNEL}")
                    while not stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            account, _, device = note.payload.partition(":")
                            callback(int(account), int(device))
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
