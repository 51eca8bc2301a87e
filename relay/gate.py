"""How the relay's event loop reaches storage.

Handing every storage call to a thread pool cost more than the calls themselves: each
hop wakes a worker, and dozens of workers fighting the event loop for the interpreter
lock spent more time in futex calls than in SQLite (the relay reached 0.3 of its own
echo route). So each backend gets the cheapest safe path:

- SQLite: a read is answered from the page cache in microseconds and, in WAL mode,
  never waits for a writer, so reads run on the event loop. Writes (whose commit
  waits for an fsync) go to one writer thread, which takes everything queued since
  its last commit and writes the concurrent sends in one transaction.
- PostgreSQL: every call crosses the network, so each runs on a worker thread, and
  PostgreSQL groups concurrent commits itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from relay.storage import MailboxQuota, NewEnvelope, Storage

T = TypeVar("T")

# Enough to merge every send that arrives during one fsync under heavy load, while
# keeping a batch's transaction short.
MAX_BATCH = 256


class StorageGate:
    """PostgreSQL (and the default): every call on a worker thread."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Nothing to start: calls run on asyncio's own worker threads."""

    def stop(self) -> None:
        """Nothing to stop."""

    async def read(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(call, *args)

    async def write(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(call, *args)

    async def enqueue(self, envelopes: Sequence[NewEnvelope], quota: MailboxQuota) -> list[str]:
        return await asyncio.to_thread(self.storage.enqueue, envelopes, quota)


class _Job:
    __slots__ = ("args", "call", "future", "send")

    def __init__(
        self,
        future: asyncio.Future[Any],
        call: Callable[..., Any] | None,
        args: tuple[Any, ...],
        send: tuple[Sequence[NewEnvelope], MailboxQuota] | None,
    ) -> None:
        self.future = future
        self.call = call
        self.args = args
        self.send = send


class SqliteGate(StorageGate):
    """Reads on the event loop; writes on one thread, concurrent sends committed together."""

    def __init__(self, storage: Storage) -> None:
        super().__init__(storage)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._serve, name="sqlite-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    async def read(self, call: Callable[..., T], *args: Any) -> T:
        return call(*args)

    async def write(self, call: Callable[..., T], *args: Any) -> T:
        return await self._submit(call, args, None)  # type: ignore[no-any-return]

    async def enqueue(self, envelopes: Sequence[NewEnvelope], quota: MailboxQuota) -> list[str]:
        return await self._submit(None, (), (envelopes, quota))  # type: ignore[no-any-return]

    def _submit(
        self,
        call: Callable[..., Any] | None,
        args: tuple[Any, ...],
        send: tuple[Sequence[NewEnvelope], MailboxQuota] | None,
    ) -> asyncio.Future[Any]:
        if self._loop is None or self._thread is None:
            raise RuntimeError("the storage writer is not running")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.put(_Job(future, call, args, send))
        return future

    def _serve(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            with contextlib.suppress(queue.Empty):
                while len(batch) < MAX_BATCH:
                    job = self._jobs.get_nowait()
                    if job is None:
                        stopping = True
                        break
                    batch.append(job)
            outcomes = self._run(batch)
            assert self._loop is not None
            # One wake-up of the event loop for the whole batch.
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(_settle, outcomes)
            if stopping:
                return

    def _run(self, batch: list[_Job]) -> list[tuple[asyncio.Future[Any], Any, bool]]:
        outcomes: list[tuple[asyncio.Future[Any], Any, bool]] = []
        sends = [job for job in batch if job.send is not None]
        if sends:
            grouped = self.storage.enqueue_group([job.send for job in sends if job.send])
            for job, outcome in zip(sends, grouped, strict=True):
                outcomes.append((job.future, outcome, isinstance(outcome, Exception)))
        for job in batch:
            if job.call is None:
                continue
            try:
                outcomes.append((job.future, job.call(*job.args), False))
            except Exception as error:  # noqa: BLE001 - raised again in the request
                outcomes.append((job.future, error, True))
        return outcomes


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, bool]]) -> None:
    for future, value, failed in outcomes:
        if future.cancelled():
            continue  # the client went away; the write still happened
        if failed:
            future.set_exception(value)
        else:
            future.set_result(value)


def gate_for(storage: Storage) -> StorageGate:
    return SqliteGate(storage) if storage.dialect == "sqlite" else StorageGate(storage)
