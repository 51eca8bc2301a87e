"""Push at scale: many push WebSockets on one relay, then two relays on one PostgreSQL.

Part 1, one relay process (SQLite, HTTPS on loopback): 5,000 accounts each hold
a push WebSocket, opened from one asyncio process over 25 loopback source
addresses (200 each, under the default per-address cap of 256). Reported: the
relay's memory per idle push connection (RSS growth / connections), and the
send-to-push latency at 500 messages/s (each message one authenticated
`POST /v1/messages` to a random one of the 5,000; the latency runs from the moment
the sender starts the request to the moment the push frame is read), measured for
10 s after a 5 s warm-up at the same rate.

Part 2, PostgreSQL: throughput (messages pushed per second, a fixed number sent
with a fixed number in flight; the best of three runs, the least disturbed by
other work on the machine) with one relay process, then with two relay processes
on the same database, 2,000 clients and the senders spread over both (a push for
a client on the other relay crosses through LISTEN/NOTIFY). The ratio, two against
one, has a target of 1.6; beside it the CPU each process used during the two-relay
run and the whole machine's, in cores, which say what limits the scaling here.

The load generator is one Python process (uvloop, websockets and a minimal HTTP/1.1
client); its CPU is reported beside the relay's, since on a small machine it competes
with what it measures. So is the relay's CPU with its push connections idle: each
push handler wakes every 20 s to ping (and re-check the mailbox and key stock).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import resource
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench.harness import BenchReport, Comparison, Figure, percentile
from relay.server import PUSH_IDLE_SECONDS
from tests.support.components import PostgresServer, RelayProcess

PER_SOURCE = 200  # push connections per loopback source address (default cap: 256)
BODY_B64 = base64.b64encode(os.urandom(200)).decode()
RELAY_ARGS = ["--rate", "1000000", "--address-rate", "1000000"]


@dataclass(frozen=True)
class Sizes:
    connections: int  # part 1
    rate: float  # messages/s, part 1
    seconds: float  # part 1, measured
    warm_up: float  # part 1, at the same rate before
    pg_clients: int  # part 2
    pg_messages: int  # part 2, per run
    runs: int  # part 2, runs of each configuration (the best counts)
    window: int  # part 2, messages in flight
    settle: float  # seconds for new push connections to go idle
    idle: float  # seconds their CPU is measured idle
    stall: float  # part 2: seconds without a push after which the rest count as lost

    @staticmethod
    def of(quick: bool) -> Sizes:
        if quick:
            return Sizes(40, 50, 1, 0.2, 20, 100, 1, 8, 0.5, 0.5, 1)
        return Sizes(5_000, 500, 10, 5, 2_000, 3_000, 3, 64, 3, PUSH_IDLE_SECONDS + 1, 3)


@dataclass(frozen=True)
class Account:
    name: str
    token: str


def _context(relay: RelayProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(relay.ca_file))


class Poster:
    """Keep-alive HTTPS connections that POST JSON, and no more: the load generator
    must cost less than what it loads (httpx took about 4 ms of CPU a request, so
    this one process could not send 500 a second).

    Each call takes a connection of the pool, so at most `size` are in flight; a
    connection the relay closed (keep-alive timeout) is replaced and the request
    sent again, which is safe for these (a message id makes a send idempotent).
    """

    def __init__(self, relay: RelayProcess, source: str, size: int) -> None:
        self.relay = relay
        self.source = source
        self.size = size
        self._context = _context(relay)
        self._pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None]
        self._pool = asyncio.Queue()
        for _ in range(size):
            self._pool.put_nowait(None)  # connected when first used

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1",
            self.relay.port,
            ssl=self._context,
            server_hostname="127.0.0.1",
            local_addr=(self.source, 0),
        )

    async def post(self, path: str, body: object, token: str | None = None) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "")
            + "\r\n"
        ).encode()
        connection = await self._pool.get()
        try:
            for attempt in range(2):
                try:
                    if connection is None:
                        connection = await self._connect()
                    reader, writer = connection
                    writer.write(head + payload)
                    response = await reader.readuntil(b"\r\n\r\n")
                    match = re.search(rb"\r\ncontent-length: *(\d+)", response, re.IGNORECASE)
                    assert match is not None, response
                    answer = await reader.readexactly(int(match.group(1)))
                    return int(response[9:12]), answer
                except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                    if connection is not None:
                        connection[1].transport.abort()
                    connection = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")
        finally:
            self._pool.put_nowait(connection)

    async def close(self) -> None:
        while not self._pool.empty():
            connection = self._pool.get_nowait()
            if connection is not None:
                connection[1].transport.abort()


def _sources(first: int) -> Iterator[str]:
    """Loopback addresses 127.0.<first>.1, .2, … then the next /24."""
    number = 0
    while True:
        yield f"127.0.{first + number // 250}.{number % 250 + 1}"
        number += 1


async def _register(poster: Poster, count: int) -> list[Account]:
    async def one() -> Account:
        name = f"p{uuid.uuid4().hex[:12]}"
        status, body = await poster.post("/v1/accounts", {"username": name, "device_name": "bench"})
        assert status == 201, body
        return Account(name, str(json.loads(body)["token"]))

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def _send(poster: Poster, sender: Account, recipient: Account, ident: str) -> None:
    message = {"id": ident, "recipient": recipient.name, "device_id": 1, "body": BODY_B64}
    status, body = await poster.post("/v1/messages", {"messages": [message]}, sender.token)
    assert status == 200, body


def _discard(relay: RelayProcess) -> None:
    """Ends a relay of the benchmark's own. Killed, not stopped: a push handler notices
    a closed WebSocket only when it next sends, so a graceful stop would wait out its
    2 s timeout, which is most of a quick run."""
    relay.kill()


@dataclass
class Pushes:
    """Push connections in this event loop, recording when each envelope arrives."""

    arrived: dict[str, float] = field(default_factory=dict)
    connections: dict[str, ClientConnection] = field(default_factory=dict)
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    async def open(self, relay: RelayProcess, account: Account, source: str) -> None:
        url = relay.url.replace("https://", "wss://", 1) + "/v1/push"
        for attempt in range(3):
            try:
                connection = await connect(
                    url,
                    ssl=_context(relay),
                    additional_headers={"Authorization": f"Bearer {account.token}"},
                    proxy=None,
                    compression=None,
                    # The relay pings; thousands of client pings would be load of our own.
                    ping_interval=None,
                    open_timeout=120,
                    local_addr=(source, 0),
                )
                break
            except OSError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.5)
        self.connections[account.name] = connection
        self.readers.append(asyncio.create_task(self._read(connection)))

    async def _read(self, connection: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in connection:
                now = time.perf_counter()
                if '"envelope"' in str(frame):
                    self.arrived.setdefault(json.loads(frame)["id"], now)

    async def open_all(
        self, relay: RelayProcess, accounts: list[Account], sources: Iterator[str]
    ) -> float:
        """Opens one per account, PER_SOURCE per source address; connections/s."""
        limit = asyncio.Semaphore(64)
        source = next(sources)

        async def one(index: int, account: Account, source: str) -> None:
            async with limit:
                await self.open(relay, account, source)

        tasks = []
        for index, account in enumerate(accounts):
            if index and index % PER_SOURCE == 0:
                source = next(sources)
            tasks.append(one(index, account, source))
        started = time.perf_counter()
        await asyncio.gather(*tasks)
        return len(accounts) / (time.perf_counter() - started)

    async def close(self, names: list[str] | None = None) -> None:
        chosen = list(self.connections) if names is None else names
        await asyncio.gather(
            *(self.connections.pop(name).close() for name in chosen), return_exceptions=True
        )

    async def wait_for(self, ids: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while any(i not in self.arrived for i in ids):
            if time.monotonic() > deadline:
                missing = sum(i not in self.arrived for i in ids)
                raise RuntimeError(f"{missing} of {len(ids)} messages were not pushed")
            await asyncio.sleep(0.01)

    async def settle(self, ids: list[str], stall: float) -> int:
        """Waits until every one of `ids` has arrived, or none has for `stall`
        seconds; how many never arrived."""
        last_count, last_change = -1, time.monotonic()
        while True:
            count = sum(i in self.arrived for i in ids)
            if count == len(ids):
                return 0
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > stall:
                return len(ids) - count
            await asyncio.sleep(0.01)

    async def quiet(self, seconds: float = 0.5) -> None:
        """Until no envelope has arrived for `seconds` (re-pushes after a reconnect)."""
        while True:
            count = len(self.arrived)
            await asyncio.sleep(seconds)
            if len(self.arrived) == count:
                return


# ---------------------------------------------------------------------- CPU


class Cpu:
    """CPU seconds used by some processes over a window; `(pid, True)` counts the
    process's children too (PostgreSQL's backends)."""

    def __init__(self, processes: dict[str, tuple[int, bool]]) -> None:
        self.processes = {
            name: (psutil.Process(pid), children) for name, (pid, children) in processes.items()
        }
        self._start: dict[str, float] = {}
        self._machine_start = 0.0
        self._wall = 0.0

    def _now(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, (process, children) in self.processes.items():
            total = 0.0
            for member in [process, *(process.children(recursive=True) if children else [])]:
                with contextlib.suppress(psutil.Error):
                    times = member.cpu_times()
                    total += times.user + times.system
            used[name] = total
        return used

    @staticmethod
    def _machine() -> float:
        """CPU seconds the whole machine has been busy (other people's work too)."""
        times = psutil.cpu_times()
        busy: float = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        return busy

    def start(self) -> None:
        self._start = self._now()
        self._machine_start = self._machine()
        self._wall = time.perf_counter()

    def cores(self) -> tuple[dict[str, float], float]:
        """Average cores used by each since start(), and by the whole machine."""
        wall = time.perf_counter() - self._wall
        now = self._now()
        machine = (self._machine() - self._machine_start) / wall
        return {name: (now[name] - self._start[name]) / wall for name in now}, machine


# ---------------------------------------------------------------------- part 1


async def _latency(
    poster: Poster,
    accounts: list[Account],
    pushes: Pushes,
    rate: float,
    seconds: float,
) -> tuple[list[float], float]:
    """Sends at `rate` for `seconds`; latencies (ms) and the rate achieved."""
    pick = random.Random(1)
    total = int(rate * seconds)
    sent: dict[str, float] = {}
    tasks = []
    started = time.perf_counter()
    for number in range(total):
        delay = started + number / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        ident = f"l{uuid.uuid4().hex}"
        sender, recipient = pick.sample(accounts, 2)
        sent[ident] = time.perf_counter()
        tasks.append(asyncio.create_task(_send(poster, sender, recipient, ident)))
    await asyncio.gather(*tasks)
    achieved = total / (time.perf_counter() - started)
    await pushes.wait_for(list(sent))
    return [(pushes.arrived[i] - t) * 1000 for i, t in sent.items()], achieved


async def _one_relay(sizes: Sizes, tmp: Path, report: BenchReport) -> None:
    relay = RelayProcess(tmp / "relay", extra_args=RELAY_ARGS).start()
    pushes = Pushes()
    try:
        assert relay.process is not None
        memory = psutil.Process(relay.process.pid)
        poster = Poster(relay, "127.0.4.1", 64)
        try:
            accounts = await _register(poster, sizes.connections)
            await asyncio.sleep(0.5)
            rss_before = memory.memory_info().rss
            opened = await pushes.open_all(relay, accounts, _sources(10))
            # Every push handler through its first fetch, then idle.
            await asyncio.sleep(sizes.settle)
            rss_after = memory.memory_info().rss
            cpu = Cpu({"relay": (relay.process.pid, False), "load generator": (os.getpid(), False)})
            cpu.start()
            await asyncio.sleep(sizes.idle)
            idle_cores, _ = cpu.cores()
            # Warm-up at the same rate: the first full garbage collection after
            # thousands of connections were opened pauses the relay for about half a
            # second, once; it belongs to the ramp-up, not to the steady state.
            await _latency(poster, accounts, pushes, sizes.rate, sizes.warm_up)
            cpu.start()
            latencies, achieved = await _latency(
                poster, accounts, pushes, sizes.rate, sizes.seconds
            )
            run_cores, _ = cpu.cores()
        finally:
            await poster.close()
        n = sizes.connections
        report.figures += [
            Figure(
                f"push connections held by one relay, {n} accounts", len(pushes.connections), ""
            ),
            Figure("push connections opened per second", opened, "conn/s"),
            Figure(
                "relay memory per idle push connection",
                (rss_after - rss_before) / n / 1024,
                "KiB",
                notes=f"relay RSS {rss_before / 2**20:.0f} MiB before, "
                f"{rss_after / 2**20:.0f} MiB with {n} connections",
            ),
            Figure(f"relay RSS with {n} push connections", rss_after / 2**20, "MiB"),
            Figure(
                f"relay CPU with {n} idle push connections",
                idle_cores["relay"],
                "cores",
                notes=f"over {sizes.idle:g} s: each push handler wakes every "
                f"{PUSH_IDLE_SECONDS} s to ping",
            ),
            Figure(
                f"send rate achieved (asked {sizes.rate:g} msg/s)",
                achieved,
                "msg/s",
                higher_is_better=True,
            ),
            Figure(
                f"send-to-push p50 at {sizes.rate:g} msg/s, {n} connections",
                percentile(latencies, 0.5),
                "ms",
            ),
            Figure(
                f"send-to-push p99 at {sizes.rate:g} msg/s, {n} connections",
                percentile(latencies, 0.99),
                "ms",
            ),
            Figure(
                f"send-to-push max at {sizes.rate:g} msg/s, {n} connections",
                max(latencies),
                "ms",
            ),
            Figure(f"relay CPU at {sizes.rate:g} msg/s", run_cores["relay"], "cores"),
            Figure(
                f"load generator CPU at {sizes.rate:g} msg/s", run_cores["load generator"], "cores"
            ),
        ]
    finally:
        await pushes.close()
        _discard(relay)


# ---------------------------------------------------------------------- part 2


@dataclass(frozen=True)
class Run:
    rate: float  # messages pushed per second
    lost: int  # sent, but never pushed
    cores: dict[str, float]
    machine: float  # cores busy on the whole machine, other people's work included


async def _throughput(
    senders: list[tuple[Poster, Account]],
    recipients: list[Account],
    pushes: Pushes,
    total: int,
    window: int,
    cpu: Cpu,
    stall: float,
) -> Run:
    """Sends `total` with `window` in flight; pushed per second until the last push."""
    pick = random.Random(2)
    plan = [(f"t{uuid.uuid4().hex}", pick.choice(recipients)) for _ in range(total)]
    queue = iter(enumerate(plan))

    async def worker() -> None:
        for number, (ident, recipient) in queue:
            poster, sender = senders[number % len(senders)]
            await _send(poster, sender, recipient, ident)

    cpu.start()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(window)))
    # While sending: settle() may wait out a stall, which would water the shares down.
    cores, machine = cpu.cores()
    ids = [ident for ident, _ in plan]
    lost = await pushes.settle(ids, stall)
    last = max(pushes.arrived[i] for i in ids if i in pushes.arrived)
    return Run((total - lost) / (last - started), lost, cores, machine)


async def _best(runs: int, measure: Callable[[], Awaitable[Run]]) -> tuple[Run, int]:
    """The fastest of several runs (the least disturbed by other work on the
    machine), and the pushes lost in all of them."""
    results = [await measure() for _ in range(runs)]
    return max(results, key=lambda run: run.rate), sum(run.lost for run in results)


async def _two_relays(sizes: Sizes, tmp: Path, report: BenchReport) -> None:
    postgres = PostgresServer().start()
    first = RelayProcess(tmp / "pg-a", database_url=postgres.dsn, extra_args=RELAY_ARGS).start()
    second: RelayProcess | None = None
    pushes = Pushes()
    posters: list[Poster] = []
    try:
        assert first.process is not None
        assert postgres.process is not None
        processes = {
            "relay A": (first.process.pid, False),
            "postgres": (postgres.process.pid, True),
            "load generator": (os.getpid(), False),
        }
        posters = [Poster(first, "127.0.5.1", sizes.window)]
        accounts = await _register(posters[0], sizes.pg_clients)
        await pushes.open_all(first, accounts, _sources(20))
        senders = accounts[: max(2, len(accounts) // 10)]
        one, lost_one = await _best(
            sizes.runs,
            lambda: _throughput(
                [(posters[0], s) for s in senders],
                accounts,
                pushes,
                sizes.pg_messages,
                sizes.window,
                Cpu(processes),
                sizes.stall,
            ),
        )

        second = RelayProcess(tmp / "pg-b", database_url=postgres.dsn, extra_args=RELAY_ARGS)
        second.start()
        assert second.process is not None
        processes["relay B"] = (second.process.pid, False)
        # Every other client moves to the second relay.
        moving = accounts[1::2]
        await pushes.close([a.name for a in moving])
        await pushes.open_all(second, moving, _sources(30))
        await pushes.quiet()  # pending envelopes re-pushed on reconnect
        posters.append(Poster(second, "127.0.5.2", sizes.window))
        two, lost_two = await _best(
            sizes.runs,
            lambda: _throughput(
                [(poster, s) for s in senders for poster in posters],
                accounts,
                pushes,
                sizes.pg_messages,
                sizes.window,
                Cpu(processes),
                sizes.stall,
            ),
        )
    finally:
        for poster in posters:
            await poster.close()
        await pushes.close()
        for relay in (first, second):
            if relay is not None:
                _discard(relay)
        postgres.stop()

    cores = os.cpu_count() or 1

    def shares(run: Run) -> str:
        used = sum(run.cores.values())
        each = ", ".join(f"{name} {value:.2f}" for name, value in run.cores.items())
        return f"{each} ({used:.2f} cores; whole machine busy {run.machine:.2f} of {cores} cores)"

    reason = f"CPU used, two relays: {shares(two)}; one relay: {shares(one)}"
    report.comparisons.append(
        Comparison(
            f"messages/s, 2 relays on one PostgreSQL, {sizes.pg_clients} clients",
            two.rate,
            one.rate,
            "msg/s",
            "1 relay",
            1.6,
            notes=reason,
        )
    )
    report.figures += [
        Figure(f"CPU of {name}, two relays", value, "cores") for name, value in two.cores.items()
    ]
    report.figures += [
        Figure("CPU of all processes, two relays", sum(two.cores.values()), "cores"),
        Figure("CPU of the whole machine, two relays", two.machine, "cores"),
        Figure(
            f"sent but never pushed, PostgreSQL (of {2 * sizes.runs} runs)",
            lost_one + lost_two,
            "msgs",
            0,
            notes="seq is allocated before commit: a push connection that has fetched a "
            "later seq skips an earlier one committed after it",
        ),
    ]
    print(
        f"  two relays vs one: {two.rate:.0f} vs {one.rate:.0f} msg/s "
        f"({two.rate / one.rate:.2f}x); {reason}; never pushed: {lost_one} + {lost_two}"
    )


def run(quick: bool) -> BenchReport:
    report = BenchReport("push", quick)
    sizes = Sizes.of(quick)
    # Thousands of sockets in this one process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="cipherline-bench-push-") as tmp:

        async def main() -> None:
            await _one_relay(sizes, Path(tmp), report)
            await _two_relays(sizes, Path(tmp), report)

        uvloop.run(main())
    return report
