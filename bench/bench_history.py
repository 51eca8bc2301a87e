"""History transfer to a linked device (issue #19; docs/protocol.md §14, "History
transfer"): 100,000 messages from one device of an account to the one it just
linked, through a real relay on loopback, from `Client.transfer_history` to the
new device's last chunk imported. Target under 30 s.

The limit it is compared with: the same bytes (every chunk as encrypted, the same
sizes) uploaded and then downloaded through the relay's attachment path in the same
run, one blob after another, with nothing else done: what the transfer would cost
if exporting, encrypting, announcing, opening and importing were free.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.bench_store import WORDS
from bench.harness import BenchReport, Comparison, Figure
from tests.support.components import RelayProcess

INSERT = (
    "INSERT INTO messages (conversation_id, uuid, sender, outgoing, kind, body, sent_at,"
    " received_at, status) VALUES (?, ?, ?, ?, 'text', ?, ?, ?, ?)"
)
PEERS = 40


def _fill(store: object, count: int) -> None:
    """`count` messages over PEERS direct chats and a group, written in one go."""
    from app.store import Store

    assert isinstance(store, Store)
    with store.transaction():
        chats = [store.conversations.direct(f"friend{n}", now=1).id for n in range(PEERS)]
        group_id = b"\x01" * 16
        group = store.conversations.create_group(group_id, "Everyone", now=1)
        store.groups.create(group_id, group.id, "Everyone")
        store.groups.set_members(group_id, [f"friend{n}" for n in range(PEERS)])
        chats.append(group.id)
        rows = []
        for number in range(count):
            chat = chats[number % len(chats)]
            outgoing = number % 2 == 0
            words = " ".join(WORDS[(number * 7 + k * 13) % len(WORDS)] for k in range(8))
            rows.append(
                (
                    chat,
                    f"history-{number:07d}",
                    "alice" if outgoing else f"friend{number % PEERS}",
                    int(outgoing),
                    f"{words} {number}",
                    1_600_000_000_000 + number * 30_000,
                    1_600_000_000_500 + number * 30_000,
                    "delivered" if outgoing else "read",
                )
            )
            if len(rows) == 10_000:
                store.executemany(INSERT, rows)
                rows.clear()
        if rows:
            store.executemany(INSERT, rows)


def _raw_path(relay_client: object, sizes: list[int], root: Path) -> float:
    """Uploads then downloads blobs of `sizes` bytes through the attachment path."""
    from app.net import RelayClient

    assert isinstance(relay_client, RelayClient)
    blobs = [os.urandom(size) for size in sizes]
    sink = root / "downloaded"
    started = time.perf_counter()
    ids = []
    for blob in blobs:
        path = root / "blob"
        path.write_bytes(blob)
        with path.open("rb") as source:
            ids.append(relay_client.upload_attachment(source))
    for blob_id in ids:
        with sink.open("wb") as target:
            relay_client.download_attachment(blob_id, target)
    return time.perf_counter() - started


def run(quick: bool) -> BenchReport:
    from app.services.events import Event, HistoryProgress
    from app.services.history import sealed_size_bound
    from tests.services.helpers import Person

    report = BenchReport("history", quick)
    count = 3_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="cipherline-bench-history-") as tmp:
        root = Path(tmp)
        relay = RelayProcess(
            root / "relay", extra_args=["--rate", "1000000", "--address-rate", "1000000"]
        ).start()
        laptop = phone = None
        try:
            laptop = Person(root, "alice", relay)
            store = laptop.client.messenger.store
            laptop.client.core(_fill, store, count).result(600)
            phone = Person(root, "alice", relay, adding_to=laptop)
            device_id = phone.client.messenger.device_id
            finished = []

            def listen(event: Event, events: list[Event] = phone.events) -> None:
                events.append(event)
                if isinstance(event, HistoryProgress) and event.finished:
                    finished.append(time.perf_counter())

            phone.client.set_listener(listen)
            started = time.perf_counter()
            sent = laptop.client.transfer_history(device_id).result(600)
            announced = time.perf_counter() - started
            deadline = time.monotonic() + 600
            while not finished and time.monotonic() < deadline:
                time.sleep(0.01)
            if not finished:
                raise RuntimeError("the new device never finished importing the history")
            elapsed = finished[0] - started

            phone_store = phone.client.messenger.store

            def chunk_sizes() -> list[int]:
                rows = phone_store.execute("SELECT size FROM history_chunks").fetchall()
                return [int(r[0]) for r in rows]

            def imported() -> int:
                row = phone_store.execute(
                    "SELECT COUNT(*) FROM messages WHERE uuid LIKE 'history-%'"
                ).fetchone()
                return int(row[0])

            sizes = [sealed_size_bound(size) for size in phone.client.core(chunk_sizes).result()]
            arrived = phone.client.core(imported).result()
            if arrived != count or sent < count:
                raise RuntimeError(f"{arrived} of {count} messages arrived ({sent} sent)")
            relay_client = laptop.profile.relay(token=laptop.client.messenger.relay_token)
            try:
                raw = _raw_path(relay_client, sizes, root)
            finally:
                relay_client.close()
            megabytes = sum(sizes) / 1e6
            print(
                f"  {count:,} messages in {len(sizes)} chunks, {megabytes:.1f} MB encrypted:"
                f" {elapsed:.2f} s (all announced after {announced:.2f} s);"
                f" the same bytes up and down the attachment path {raw:.2f} s"
                f" ({elapsed / raw:.1f}x)",
                flush=True,
            )
            report.comparisons.append(
                Comparison(
                    f"transfer {count:,} messages to a linked device",
                    elapsed,
                    raw,
                    "s",
                    "same bytes through the attachment path",
                    higher_is_better=False,
                    notes=f"{len(sizes)} chunks, {megabytes:.1f} MB encrypted",
                )
            )
            report.figures += [
                Figure(f"history transfer, {count:,} messages", elapsed, "s", 30.0),
                Figure("messages per second", count / elapsed, "msg/s", higher_is_better=True),
            ]
        finally:
            for person in (phone, laptop):
                if person is not None:
                    person.stop()
            relay.stop()
    return report
