"""Record storage: a compare-and-swap map from record id to one sealed value.

The store knows nothing of counters or passwords: a record is an opaque sealed
value (`vault_emulator.state`) plus the storage's own bookkeeping, which the node
binds into the seal so that a value cannot be moved, re-put or brought back:

- `version`: how many times the key was written since it was created (etcd's
  `version`; a column in SQLite);
- `created`: when the key was created (etcd's `create_revision`; a monotonic
  sequence in SQLite);
- `revision`: what a compare-and-swap compares (etcd's `mod_revision`).

One node keeps records in SQLite; a fleet keeps them in etcd, where every write
is a transaction on the key's mod_revision, so three nodes enforce one limit.
Version 1 stored records differently (`legacy_records`); a node migrates them.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vault_emulator.etcd import EtcdClient


@dataclass(frozen=True)
class Versioned:
    value: bytes
    version: int
    created: int
    revision: int

    def __repr__(self) -> str:
        return f"Versioned(v{self.version}, created {self.created})"


@dataclass(frozen=True)
class LegacyRecord:
    """A record as vault version 1 stored it: sealed blob, limit, attempts in the clear."""

    record_id: bytes
    blob: bytes
    limit: int
    attempts: int


@dataclass(frozen=True)
class WitnessWrite:
    """The node's witness entry, to be written with a record if it is still `expected`."""

    node: str
    expected: Versioned | None
    value: bytes


class RecordStore(Protocol):
    def read(self, record_id: bytes, *, fresh: bool) -> Versioned | None:
        """The record; with fresh=False a cached copy may do (a swap will check it)."""
        ...

    def swap(
        self, record_id: bytes, expected: Versioned | None, value: bytes
    ) -> tuple[bool, Versioned | None]:
        """Writes `value` if the record is still `expected` (None: absent).
        Returns (written, the record as it is now)."""
        ...

    def swap_witnessed(
        self, record_id: bytes, expected: Versioned | None, value: bytes, witness: WitnessWrite
    ) -> tuple[bool, Versioned | None, Versioned | None]:
        """`swap`, atomically with the witness entry: both are written only if both
        are as expected. Returns (written, the record now, the witness entry now)."""
        ...

    def read_witness(self, node: str) -> Versioned | None: ...

    def create_witness(self, node: str, value: bytes) -> bool:
        """Writes the node's first witness entry; False if it has one already."""
        ...

    def publish_node(self, name: str, entry: bytes) -> None: ...

    def nodes(self) -> dict[str, bytes]: ...

    def legacy_records(self) -> Iterator[LegacyRecord]: ...

    def drop_legacy(self, record_id: bytes) -> None: ...


class SqliteRecords:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sealed_records (created INTEGER PRIMARY KEY AUTOINCREMENT,"
            " id BLOB NOT NULL UNIQUE, value BLOB NOT NULL, version INTEGER NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, entry BLOB)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS witness (name TEXT PRIMARY KEY, value BLOB NOT NULL,"
            " version INTEGER NOT NULL)"
        )

    def read(self, record_id: bytes, *, fresh: bool) -> Versioned | None:
        with self._lock:
            return self._read(record_id)

    def _read(self, record_id: bytes) -> Versioned | None:
        row = self._db.execute(
            "SELECT value, version, created FROM sealed_records WHERE id = ?", (record_id,)
        ).fetchone()
        if row is None:
            return None
        return Versioned(bytes(row[0]), int(row[1]), int(row[2]), int(row[1]))

    def _write_record(self, record_id: bytes, expected: Versioned | None, value: bytes) -> bool:
        if expected is None:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO sealed_records (id, value, version) VALUES (?, ?, 1)",
                (record_id, value),
            )
        else:
            cursor = self._db.execute(
                "UPDATE sealed_records SET value = ?, version = version + 1"
                " WHERE id = ? AND version = ? AND created = ?",
                (value, record_id, expected.version, expected.created),
            )
        return cursor.rowcount == 1

    def swap(
        self, record_id: bytes, expected: Versioned | None, value: bytes
    ) -> tuple[bool, Versioned | None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                written = self._write_record(record_id, expected, value)
                now = self._read(record_id)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return written, now

    def _read_witness(self, node: str) -> Versioned | None:
        row = self._db.execute(
            "SELECT value, version FROM witness WHERE name = ?", (node,)
        ).fetchone()
        if row is None:
            return None
        return Versioned(bytes(row[0]), int(row[1]), 0, int(row[1]))

    def read_witness(self, node: str) -> Versioned | None:
        with self._lock:
            return self._read_witness(node)

    def create_witness(self, node: str, value: bytes) -> bool:
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO witness (name, value, version) VALUES (?, ?, 1)",
                (node, value),
            )
        return cursor.rowcount == 1

    def swap_witnessed(
        self, record_id: bytes, expected: Versioned | None, value: bytes, witness: WitnessWrite
    ) -> tuple[bool, Versioned | None, Versioned | None]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                now = self._read_witness(witness.node)
                same = (now is None and witness.expected is None) or (
                    now is not None
                    and witness.expected is not None
                    and now.version == witness.expected.version
                    and now.value == witness.expected.value
                )
                written = same and self._write_record(record_id, expected, value)
                if written:
                    self._db.execute(
                        "INSERT INTO witness (name, value, version) VALUES (?, ?, 1)"
                        " ON CONFLICT (name) DO UPDATE SET value = excluded.value,"
                        " version = witness.version + 1",
                        (witness.node, witness.value),
                    )
                record_now, witness_now = self._read(record_id), self._read_witness(witness.node)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT" if written else "ROLLBACK")
        return written, record_now, witness_now

    def publish_node(self, name: str, entry: bytes) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO nodes (name, entry) VALUES (?, ?)", (name, entry)
            )

    def nodes(self) -> dict[str, bytes]:
        with self._lock:
            rows = self._db.execute("SELECT name, entry FROM nodes").fetchall()
        return {str(r[0]): bytes(r[1]) for r in rows}

    def _has_legacy_table(self) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
            ).fetchone()
            is not None
        )

    def legacy_records(self) -> Iterator[LegacyRecord]:
        with self._lock:
            if not self._has_legacy_table():
                return
            rows = self._db.execute(
                "SELECT id, blob, attempt_limit, attempts FROM records"
            ).fetchall()
        for row in rows:
            yield LegacyRecord(bytes(row[0]), bytes(row[1]), int(row[2]), int(row[3]))

    def drop_legacy(self, record_id: bytes) -> None:
        with self._lock:
            if self._has_legacy_table():
                self._db.execute("DELETE FROM records WHERE id = ?", (record_id,))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _compare(key: str, expected: Versioned | None) -> dict[str, str]:
    """An etcd transaction's test that `key` is still as `expected` (None: absent)."""
    if expected is None:
        return {"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
    return {"key": key, "result": "EQUAL", "target": "MOD", "mod_revision": str(expected.revision)}


def _after_put(expected: Versioned | None, value: bytes, revision: int) -> Versioned:
    if expected is None:
        return Versioned(value, 1, revision, revision)
    return Versioned(value, expected.version + 1, expected.created, revision)


def _range_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


class EtcdRecords:
    """Records in etcd (v3 JSON gateway), every write a compare-and-swap.

    The last seen state of recent records is cached so that a login costs one
    round trip to etcd per step; a stale cache costs a retry, never a wrong
    answer, because every write compares the mod_revision and the node re-reads
    before any decision not to write.
    """

    PREFIX = b"/cipherline/vault/"
    CACHE_SIZE = 10_000

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._cache: OrderedDict[bytes, Versioned | None] = OrderedDict()
        self._cache_lock = threading.Lock()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._client.post(path, body)

    def _key(self, kind: str, name: bytes) -> bytes:
        return self.PREFIX + kind.encode() + b"/" + name.hex().encode()

    @staticmethod
    def _parse(result: dict[str, Any]) -> Versioned | None:
        kvs = result.get("kvs") or []
        if not kvs:
            return None
        kv = kvs[0]
        return Versioned(
            base64.b64decode(kv.get("value", "")),
            int(kv.get("version", 0)),
            int(kv.get("create_revision", 0)),
            int(kv.get("mod_revision", 0)),
        )

    def _remember(self, record_id: bytes, record: Versioned | None) -> None:
        with self._cache_lock:
            self._cache[record_id] = record
            self._cache.move_to_end(record_id)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)

    def read(self, record_id: bytes, *, fresh: bool) -> Versioned | None:
        if not fresh:
            with self._cache_lock:
                if record_id in self._cache:
                    return self._cache[record_id]
        key = _b64(self._key("r2", record_id))
        record = self._parse(self._post("/v3/kv/range", {"key": key}))
        self._remember(record_id, record)
        return record

    def swap(
        self, record_id: bytes, expected: Versioned | None, value: bytes
    ) -> tuple[bool, Versioned | None]:
        key = _b64(self._key("r2", record_id))
        result = self._post(
            "/v3/kv/txn",
            {
                "compare": [_compare(key, expected)],
                "success": [{"requestPut": {"key": key, "value": _b64(value)}}],
                "failure": [{"requestRange": {"key": key}}],
            },
        )
        if result.get("succeeded"):
            now = _after_put(expected, value, int(result["header"]["revision"]))
            self._remember(record_id, now)
            return True, now
        responses = result.get("responses") or [{}]
        current = self._parse(responses[0].get("response_range", {}))
        self._remember(record_id, current)
        return False, current

    def read_witness(self, node: str) -> Versioned | None:
        key = _b64(self._key("witness", node.encode()))
        return self._parse(self._post("/v3/kv/range", {"key": key}))

    def create_witness(self, node: str, value: bytes) -> bool:
        key = _b64(self._key("witness", node.encode()))
        result = self._post(
            "/v3/kv/txn",
            {
                "compare": [_compare(key, None)],
                "success": [{"requestPut": {"key": key, "value": _b64(value)}}],
            },
        )
        return bool(result.get("succeeded"))

    def swap_witnessed(
        self, record_id: bytes, expected: Versioned | None, value: bytes, witness: WitnessWrite
    ) -> tuple[bool, Versioned | None, Versioned | None]:
        key = _b64(self._key("r2", record_id))
        witness_key = _b64(self._key("witness", witness.node.encode()))
        result = self._post(
            "/v3/kv/txn",
            {
                "compare": [_compare(key, expected), _compare(witness_key, witness.expected)],
                "success": [
                    {"requestPut": {"key": key, "value": _b64(value)}},
                    {"requestPut": {"key": witness_key, "value": _b64(witness.value)}},
                ],
                "failure": [
                    {"requestRange": {"key": key}},
                    {"requestRange": {"key": witness_key}},
                ],
            },
        )
        if result.get("succeeded"):
            revision = int(result["header"]["revision"])
            written = _after_put(expected, value, revision)
            self._remember(record_id, written)
            return True, written, _after_put(witness.expected, witness.value, revision)
        responses = result.get("responses") or [{}, {}]
        record_now = self._parse(responses[0].get("response_range", {}))
        self._remember(record_id, record_now)
        return False, record_now, self._parse(responses[-1].get("response_range", {}))

    def publish_node(self, name: str, entry: bytes) -> None:
        key = self._key("nodes", name.encode())
        self._post(
            "/v3/kv/put",
            {"key": _b64(key), "value": _b64(json.dumps({"entry": _b64(entry)}).encode())},
        )

    def nodes(self) -> dict[str, bytes]:
        start = self.PREFIX + b"nodes/"
        result = self._post(
            "/v3/kv/range", {"key": _b64(start), "range_end": _b64(_range_end(start))}
        )
        found = {}
        for kv in result.get("kvs") or []:
            name = bytes.fromhex(base64.b64decode(kv["key"])[len(start) :].decode()).decode()
            found[name] = base64.b64decode(json.loads(base64.b64decode(kv["value"]))["entry"])
        return found

    def legacy_records(self) -> Iterator[LegacyRecord]:
        start = self.PREFIX + b"records/"
        result = self._post(
            "/v3/kv/range", {"key": _b64(start), "range_end": _b64(_range_end(start))}
        )
        for kv in result.get("kvs") or []:
            try:
                record_id = bytes.fromhex(base64.b64decode(kv["key"])[len(start) :].decode())
                value = json.loads(base64.b64decode(kv["value"]))
                legacy = LegacyRecord(
                    record_id,
                    base64.b64decode(value["blob"]),
                    int(value["limit"]),
                    int(value["attempts"]),
                )
            except (ValueError, KeyError, TypeError):
                continue  # not a version 1 record: left for the operator to look at
            yield legacy

    def drop_legacy(self, record_id: bytes) -> None:
        self._post("/v3/kv/deleterange", {"key": _b64(self._key("records", record_id))})
