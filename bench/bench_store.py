"""The encrypted store against plain SQLite with the same schema, in the same run.

Inserts (FTS triggers on in both), the newest 50 messages of a 100,000-message
conversation, one FTS query over all messages, and opening an unlocked store.
Targets: inserts at most 1.3x SQLite's time; page < 1 ms; FTS < 10 ms; open < 50 ms.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from app.crypto import Argon2Params
from app.store import PassphraseProtector, Store
from app.store.database import _split_statements
from app.store.schema import MIGRATIONS
from bench.harness import BenchReport, Comparison, Figure

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
    "meeting",
    "lunch",
    "slides",
    "budget",
    "report",
    "holiday",
    "train",
    "ticket",
    "garden",
    "recipe",
]
FAST = Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)


def _rows(total: int, big_conversation: int) -> Iterator[tuple[int, str, str, bool, str, int, str]]:
    for number in range(total):
        conversation = 1 if number < big_conversation else 2 + number % 50
        words = " ".join(WORDS[(number * 7 + k * 13) % len(WORDS)] for k in range(8))
        yield (
            conversation,
            f"u{number}",
            "bob",
            number % 2 == 0,
            f"{words} {number}",
            number,
            "read",
        )


def _plain_sqlite(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(str(path), isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")
    connection.execute("PRAGMA foreign_keys = ON")
    for statement in _split_statements(MIGRATIONS[0]):
        connection.execute(statement)
    return connection


def _conversations(execute: object, count: int = 51) -> None:
    for conversation in range(1, count + 1):
        execute(  # type: ignore[operator]
            "INSERT INTO conversations (id, kind, peer, title, last_activity)"
            " VALUES (?, 'direct', ?, ?, 0)",
            (conversation, f"peer{conversation}", f"peer{conversation}"),
        )


INSERT = (
    "INSERT INTO messages (conversation_id, uuid, sender, outgoing, body, sent_at, status)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
PAGE = (
    "SELECT id, body, sent_at FROM messages WHERE conversation_id = 1"
    " ORDER BY sent_at DESC, id DESC LIMIT 50"
)
FTS = (
    'SELECT rowid FROM messages_fts WHERE messages_fts MATCH \'"budget"* "garden"*\''
    " ORDER BY rank LIMIT 20"
)


def _timed_inserts(execute: object, executemany: object, total: int, big: int) -> float:
    started = time.perf_counter()
    batch: list[tuple[int, str, str, bool, str, int, str]] = []
    for row in _rows(total, big):
        batch.append(row)
        if len(batch) == 5000:
            execute("BEGIN")  # type: ignore[operator]
            executemany(INSERT, batch)  # type: ignore[operator]
            execute("COMMIT")  # type: ignore[operator]
            batch.clear()
    if batch:
        execute("BEGIN")  # type: ignore[operator]
        executemany(INSERT, batch)  # type: ignore[operator]
        execute("COMMIT")  # type: ignore[operator]
    return time.perf_counter() - started


def _best_ms(run: object, repeats: int = 50) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best * 1000


def run(quick: bool) -> BenchReport:
    report = BenchReport("store", quick)
    total = 20_000 if quick else 1_000_000
    big = 10_000 if quick else 100_000
    work = Path(tempfile.mkdtemp(prefix="cipherline-bench-store-"))
    try:
        plain = _plain_sqlite(work / "plain.db")
        _conversations(plain.execute)
        plain_seconds = _timed_inserts(plain.execute, plain.executemany, total, big)
        plain_page = _best_ms(lambda: plain.execute(PAGE).fetchall())
        plain_fts = _best_ms(lambda: plain.execute(FTS).fetchall(), 10)
        plain.close()

        store = Store.create(work / "profile", PassphraseProtector("bench passphrase", FAST))
        _conversations(store.execute)
        ours_seconds = _timed_inserts(store.execute, store.executemany, total, big)
        ours_page = _best_ms(lambda: store.messages.newest(1, 50))
        ours_fts = _best_ms(lambda: store.execute(FTS).fetchall(), 10)
        store.close()

        # Opening an unlocked store: the raw key is known (keyring path); no KDF.
        from app.store.keyfile import KeyFile

        key_file = KeyFile.from_json((work / "profile" / "store.key").read_text())
        db_key = PassphraseProtector("bench passphrase", FAST).unwrap(key_file)

        def open_close() -> None:
            Store._open_with_key(work / "profile" / "store.db", db_key).close()

        open_ms = _best_ms(open_close, 10)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report.comparisons.append(
        Comparison(
            f"insert {total:,} messages (FTS on), seconds",
            ours_seconds,
            plain_seconds,
            "s",
            "plain SQLite",
            target=1.3,
            higher_is_better=False,
        )
    )
    report.comparisons.append(
        Comparison(
            f"newest 50 of a {big:,}-message chat, ms",
            ours_page,
            plain_page,
            "ms",
            "plain SQLite",
            higher_is_better=False,
        )
    )
    report.comparisons.append(
        Comparison(
            f"FTS query over {total:,} messages, ms",
            ours_fts,
            plain_fts,
            "ms",
            "plain SQLite",
            higher_is_better=False,
        )
    )
    report.figures.append(Figure("newest-50 page load", ours_page, "ms", target=1.0))
    report.figures.append(Figure("FTS query", ours_fts, "ms", target=10.0))
    report.figures.append(Figure("open unlocked store", open_ms, "ms", target=50.0))
    return report
