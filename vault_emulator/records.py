"""Record storage with an attempt counter that is never lost or decreased.

A record: the sealed blob (password file and backup key, encrypted under the
fleet data key), its attempt limit and the attempts used. One node keeps them in
SQLite; a fleet keeps them in etcd, where every change to a record is a
compare-and-swap on the key's mod_revision, so three nodes enforce one limit.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vault_emulator.etcd import EtcdClient


class LockedOutNow(Exception):
    """The attempt limit was reached: the record has just been erased."""


@dataclass(frozen=True)
class Record:
    blob: bytes
    limit: int
    attempts: int


class RecordStore(Protocol):
    def get(self, record_id: bytes) -> Record | None: ...

    def create(self, record_id: bytes, blob: bytes, limit: int, *, replace: bool) -> bool: ...

    def count_attempt(self, record_id: bytes) -> Record | None:
        """attempts += 1 durably, unless the limit was reached: then erase and raise
        LockedOutNow. None if there is no such record."""
        ...

    def finish_login(self, record_id: bytes) -> Record | None:
        """After a successful login: attempts = 0 durably; the record, or None if it
        was erased in the meantime."""
        ...

    def delete(self, record_id: bytes) -> None: ...

    def publish_node(self, name: str, entry: bytes) -> None: ...

    def nodes(self) -> dict[str, bytes]: ...


class SqliteRecords:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("PRAGMA secure_delete = ON")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (id BLOB PRIMARY KEY, blob BLOB NOT NULL,"
            " attempt_limit INTEGER NOT NULL, attempts INTEGER NOT NULL)"
        )
        self._db.execute("CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, entry BLOB)")

    def _tx(self, work: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = work()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def get(self, record_id: bytes) -> Record | None:
        with self._lock:
            row = self._db.execute(
                "SELECT blob, attempt_limit, attempts FROM records WHERE id = ?", (record_id,)
            ).fetchone()
        return Record(bytes(row[0]), int(row[1]), int(row[2])) if row else None

    def create(self, record_id: bytes, blob: bytes, limit: int, *, replace: bool) -> bool:
        def work() -> bool:
            exists = self._db.execute("SELECT 1 FROM records WHERE id = ?", (record_id,)).fetchone()
            if exists and not replace:
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO records (id, blob, attempt_limit, attempts)"
                " VALUES (?, ?, ?, 0)",
                (record_id, blob, limit),
            )
            return True

        return bool(self._tx(work))

    def count_attempt(self, record_id: bytes) -> Record | None:
        def work() -> Record | str | None:
            row = self._db.execute(
                "SELECT blob, attempt_limit, attempts FROM records WHERE id = ?", (record_id,)
            ).fetchone()
            if row is None:
                return None
            if int(row[2]) >= int(row[1]):
                self._db.execute("DELETE FROM records WHERE id = ?", (record_id,))
                return "locked"
            self._db.execute(
                "UPDATE records SET attempts = attempts + 1 WHERE id = ?", (record_id,)
            )
            return Record(bytes(row[0]), int(row[1]), int(row[2]) + 1)

        result = self._tx(work)
        if result == "locked":
            raise LockedOutNow
        return result  # type: ignore[no-any-return]

    def finish_login(self, record_id: bytes) -> Record | None:
        def work() -> Record | None:
            row = self._db.execute(
                "SELECT blob, attempt_limit FROM records WHERE id = ?", (record_id,)
            ).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE records SET attempts = 0 WHERE id = ?", (record_id,))
            return Record(bytes(row[0]), int(row[1]), 0)

        result: Record | None = self._tx(work)
        return result

    def delete(self, record_id: bytes) -> None:
        self._tx(lambda: self._db.execute("DELETE FROM records WHERE id = ?", (record_id,)))

    def publish_node(self, name: str, entry: bytes) -> None:
        self._tx(
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO nodes (name, entry) VALUES (?, ?)", (name, entry)
            )
        )

    def nodes(self) -> dict[str, bytes]:
        with self._lock:
            rows = self._db.execute("SELECT name, entry FROM nodes").fetchall()
        return {str(r[0]): bytes(r[1]) for r in rows}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_MISSING = (None, "0")
_KEEP = object()


class EtcdRecords:
    """Records in etcd (v3 JSON gateway), every change a compare-and-swap.

    Each change is one transaction: compare the key's mod_revision with the one
    last seen, write on success, read the current value back on failure and try
    again. The last seen (value, revision) of recent records is cached so that a
    login costs one round trip to etcd per step; a stale cache costs a retry,
    never a wrong answer, because every write is checked against the revision
    and every decision *not* to write is re-checked against a fresh read.
    """

    PREFIX = b"/cipherline/vault/"
    CACHE_SIZE = 10_000

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._cache: OrderedDict[str, tuple[dict[str, Any] | None, str]] = OrderedDict()
        self._cache_lock = threading.Lock()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._client.post(path, body)

    def _key(self, kind: str, name: bytes) -> str:
        return _b64(self.PREFIX + kind.encode() + b"/" + name.hex().encode())

    @staticmethod
    def _parse_range(result: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        kvs = result.get("kvs") or []
        if not kvs:
            return _MISSING
        kv = kvs[0]
        return json.loads(base64.b64decode(kv["value"])), str(kv.get("mod_revision", "0"))

    def _remember(self, key: str, value: dict[str, Any] | None, revision: str) -> None:
        with self._cache_lock:
            self._cache[key] = (value, revision)
            self._cache.move_to_end(key)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)

    def _read(self, key: str) -> tuple[dict[str, Any] | None, str]:
        value, revision = self._parse_range(self._post("/v3/kv/range", {"key": key}))
        self._remember(key, value, revision)
        return value, revision

    def _txn(
        self, key: str, revision: str, value: dict[str, Any] | None
    ) -> tuple[bool, dict[str, Any] | None, str]:
        """CAS; returns (succeeded, value now, revision now)."""
        compare = (
            {"key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
            if revision == "0"
            else {"key": key, "result": "EQUAL", "target": "MOD", "mod_revision": revision}
        )
        operation = (
            {"requestDeleteRange": {"key": key}}
            if value is None
            else {"requestPut": {"key": key, "value": _b64(json.dumps(value).encode())}}
        )
        result = self._post(
            "/v3/kv/txn",
            {
                "compare": [compare],
                "success": [operation],
                "failure": [{"requestRange": {"key": key}}],
            },
        )
        if result.get("succeeded"):
            now = str(result["header"]["revision"]) if value is not None else "0"
            return True, value, now
        responses = result.get("responses") or [{}]
        current, current_revision = self._parse_range(responses[0].get("response_range", {}))
        return False, current, current_revision

    def _update(self, key: str, change: Any) -> Any:
        """`change(value) -> (new value | None to delete | _KEEP, result)`."""
        with self._cache_lock:
            cached = self._cache.get(key)
        fresh = cached is None
        value, revision = self._read(key) if cached is None else cached
        while True:
            new, result = change(value)
            if new is _KEEP:
                if fresh:
                    return result
                value, revision = self._read(key)
                fresh = True
                continue
            succeeded, value, revision = self._txn(key, revision, new)
            self._remember(key, value, revision)
            if succeeded:
                return result
            fresh = True

    @staticmethod
    def _record(value: dict[str, Any]) -> Record:
        return Record(base64.b64decode(value["blob"]), int(value["limit"]), int(value["attempts"]))

    def get(self, record_id: bytes) -> Record | None:
        value, _revision = self._read(self._key("records", record_id))
        return self._record(value) if value else None

    def create(self, record_id: bytes, blob: bytes, limit: int, *, replace: bool) -> bool:
        new = {"blob": _b64(blob), "limit": limit, "attempts": 0}

        def change(value: dict[str, Any] | None) -> tuple[object, bool]:
            if value is not None and not replace:
                return _KEEP, False
            return new, True

        return bool(self._update(self._key("records", record_id), change))

    def count_attempt(self, record_id: bytes) -> Record | None:
        def change(value: dict[str, Any] | None) -> tuple[object, object]:
            if value is None:
                return _KEEP, None
            record = self._record(value)
            if record.attempts >= record.limit:
                return None, LockedOutNow
            return dict(value, attempts=record.attempts + 1), Record(
                record.blob, record.limit, record.attempts + 1
            )

        result = self._update(self._key("records", record_id), change)
        if result is LockedOutNow:
            raise LockedOutNow
        return result  # type: ignore[no-any-return]

    def finish_login(self, record_id: bytes) -> Record | None:
        def change(value: dict[str, Any] | None) -> tuple[object, Record | None]:
            if value is None:
                return _KEEP, None
            record = self._record(value)
            if record.attempts == 0:
                return _KEEP, record
            return dict(value, attempts=0), Record(record.blob, record.limit, 0)

        result: Record | None = self._update(self._key("records", record_id), change)
        return result

    def delete(self, record_id: bytes) -> None:
        def change(value: dict[str, Any] | None) -> tuple[object, None]:
            return (_KEEP if value is None else None), None

        self._update(self._key("records", record_id), change)

    def publish_node(self, name: str, entry: bytes) -> None:
        key = self._key("nodes", name.encode())
        self._post(
            "/v3/kv/put", {"key": key, "value": _b64(json.dumps({"entry": _b64(entry)}).encode())}
        )

    def nodes(self) -> dict[str, bytes]:
        start = self.PREFIX + b"nodes/"
        end = start[:-1] + bytes([start[-1] + 1])
        result = self._post("/v3/kv/range", {"key": _b64(start), "range_end": _b64(end)})
        found = {}
        for kv in result.get("kvs") or []:
            name = bytes.fromhex(base64.b64decode(kv["key"])[len(start) :].decode()).decode()
            found[name] = base64.b64decode(json.loads(base64.b64decode(kv["value"]))["entry"])
        return found
