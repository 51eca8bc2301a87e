"""Connection hygiene for the relay's listener: timeouts and caps on connections.

uvicorn closes an idle connection only after a response (`timeout_keep_alive`): a
connection that completes TCP or TLS and then sends nothing, or sends half a
request and stalls, is held forever, and nothing limits how many one address
holds. So the relay accepts connections itself and hands each admitted one to
uvicorn's protocols:

* every accepted socket takes a place, counted per client address (IPv4, or the
  /64 of an IPv6 address) and in total, until its file descriptor is closed;
* over a cap, a connection is answered `503` with `Retry-After` after TLS (from
  a small pool of "refusal slots"), or, with that pool full, closed at once
  before any TLS: a flood then costs an `accept` and a `close` each;
* at the total cap, an idle connection (in its TLS handshake, waiting for its
  first request, or between requests) is closed to make room: the oldest of the
  address with the most idle ones, so that a flood of silent connections pushes
  out its own first and cannot lock everyone else out;
* the TLS handshake, and the headers of every request, must be complete within
  their timeouts; between requests, uvicorn's keep-alive timeout applies;
* a push WebSocket counts against the caps but is never idle-timed-out or
  evicted: it is legitimately quiet, and the push handler pings it.

The hooks are uvicorn's own: `Server.startup` (to listen through
`GuardedListener` instead of `loop.create_server`, which offers neither the peer
address before TLS nor a handshake timeout through uvicorn), a subclass of its
httptools protocol (timers and header size), and of its WebSocket protocol (to
give back the connection's place when it closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import json
import logging
import math
import resource
import socket
import ssl
import struct
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

import httptools
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from relay.metrics import Metrics

log = logging.getLogger("relay.connections")

# Descriptors kept for everything but client connections: the database (SQLite
# files or PostgreSQL connections), attachment files being written, vault
# pass-through connections, logs.
RESERVED_DESCRIPTORS = 256
ACCEPT_BATCH = 128
ACCEPT_PAUSE_SECONDS = 0.5
SUMMARY_INTERVAL_SECONDS = 60.0
COUNTERS = (
    "connections_over_limit_total",
    "connections_dropped_total",
    "connections_evicted_total",
    "connections_timed_out_total",
    "tls_handshakes_failed_total",
    "requests_headers_too_large_total",
    "accept_errors_total",
)


@dataclass(frozen=True)
class ConnectionLimits:
    """The serve options of relay/cli.py's "connection limits" group (same defaults)."""

    handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    keep_alive_timeout: int = 5
    max_connections: int = 10_000
    max_per_address: int = 256
    refusal_slots: int = 64
    max_header_bytes: int = 64 * 1024
    # Bounds the TLS close_notify exchange when the relay closes a connection: a
    # silent peer would otherwise keep the descriptor for asyncio's default 30 s.
    tls_shutdown_timeout: float = 3.0

    def __post_init__(self) -> None:
        for name in ("handshake_timeout", "header_timeout", "tls_shutdown_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "keep_alive_timeout",
            "max_connections",
            "max_per_address",
            "max_header_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.refusal_slots < 0:
            raise ValueError("refusal_slots must not be negative")

    @property
    def refusals_per_address(self) -> int:
        """One address may hold at most this many refusal slots (a sixteenth of them)."""
        return max(1, self.refusal_slots // 16) if self.refusal_slots else 0

    @property
    def retry_after(self) -> int:
        """Seconds a refused client should wait: the longest an idle connection holds
        its place before a timeout frees it."""
        longest = max(self.handshake_timeout, self.header_timeout, self.keep_alive_timeout)
        return max(1, math.ceil(longest))

    def within_descriptors(self, available: int) -> ConnectionLimits:
        """These limits with `max_connections` lowered so that every connection the
        relay may hold, refusal slots included, fits in `available` descriptors."""
        budget = available - RESERVED_DESCRIPTORS - self.refusal_slots
        if self.max_connections <= budget:
            return self
        lowered = max(16, budget)
        log.warning(
            "max connections lowered from %d to %d: the process may open %d files",
            self.max_connections,
            lowered,
            available,
        )
        return replace(self, max_connections=lowered)


def address_key(host: str) -> str:
    """Whose connection this is, for the per-address cap: an IPv4 address, or the
    /64 of an IPv6 one (one host commonly holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def raise_descriptor_limit() -> int:
    """Lift this process's soft RLIMIT_NOFILE to its hard limit; the new soft limit."""
    unlimited = 1 << 20  # Linux refuses more than fs.nr_open (1,048,576 by default)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return unlimited
    target = unlimited if hard == resource.RLIM_INFINITY else hard
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


# ---------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class Refusal:
    """Why a connection over a cap is refused: a stable code and a sentence."""

    code: str
    message: str


PER_ADDRESS = Refusal("too_many_connections", "too many connections from your address; retry later")
TOTAL = Refusal("connection_limit", "the relay is at its connection limit; retry later")
HEADERS_TOO_LARGE = Refusal("headers_too_large", "the request line and headers are too large")


class Slot:
    """One accepted connection's place, held until its socket is closed."""

    __slots__ = ("closer", "guard", "key", "reason", "released")

    def __init__(self, guard: ConnectionGuard, key: str, reason: Refusal | None) -> None:
        self.guard = guard
        self.key = key
        # Not None: the connection is over a cap and is answered 503 with this.
        self.reason = reason
        self.released = False
        # Closes the connection at once when it is evicted: cancels the handshake,
        # then aborts the transport once there is one.
        self.closer: Callable[[], object] | None = None

    @property
    def refusing(self) -> bool:
        return self.reason is not None

    def release(self) -> None:
        """Give the place back; idempotent, since several paths may close a connection."""
        if not self.released:
            self.released = True
            self.guard.release(self)


class ConnectionGuard:
    """Counts connections per address and in total, decides on each new one, and
    picks which idle connection to close at the total cap. Event-loop thread only.

    Eviction is fair between addresses: the victim is the oldest idle connection of
    the address with the most idle connections, so a flood from a few addresses
    pushes out its own connections before anyone else's. Addresses tied on that
    count are taken in the order they reached it.
    """

    def __init__(self, limits: ConnectionLimits, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self.metrics = metrics
        self.open_total = 0
        self.refusing_total = 0
        self._open: dict[str, int] = {}
        self._refusing: dict[str, int] = {}
        # Admitted connections not serving a request, per address, oldest first...
        self._idle: dict[str, OrderedDict[Slot, None]] = {}
        # ...and the addresses by how many of those they have, so that the address
        # with the most is found at once however many addresses there are.
        self._by_idle_count: dict[int, OrderedDict[str, None]] = {}
        self._most_idle = 0
        self.counters: dict[str, int] = {}
        if metrics is not None:
            # Series at 0 from the start, so that a dashboard sees a rate of 0, not no data.
            for name in COUNTERS:
                metrics.count(name, 0)
            metrics.gauge_add("connections_open", 0)

    def open_from(self, key: str) -> int:
        return self._open.get(key, 0)

    def idle_from(self, key: str) -> int:
        return len(self._idle.get(key, ()))

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount
        if self.metrics is not None:
            self.metrics.count(name, amount)

    def admit(self, key: str) -> Slot | None:
        """A place for a new connection from `key` (refusing if it is over a cap),
        or None: close it at once."""
        limits = self.limits
        if self._open.get(key, 0) >= limits.max_per_address:
            reason = PER_ADDRESS
        elif self.open_total >= limits.max_connections and not self._evict():
            reason = TOTAL
        else:
            slot = Slot(self, key, None)
            self._open[key] = self._open.get(key, 0) + 1
            self.open_total += 1
            self.idle(slot)  # until its first request's headers are in
            if self.metrics is not None:
                self.metrics.gauge_add("connections_open", 1)
            return slot
        self.count("connections_over_limit_total")
        if (
            self.refusing_total < limits.refusal_slots
            and self._refusing.get(key, 0) < limits.refusals_per_address
        ):
            slot = Slot(self, key, reason)
            self._refusing[key] = self._refusing.get(key, 0) + 1
            self.refusing_total += 1
            return slot
        self.count("connections_dropped_total")
        return None

    def idle(self, slot: Slot) -> None:
        if slot.released or slot.refusing:
            return
        slots = self._idle.setdefault(slot.key, OrderedDict())
        if slot in slots:
            slots.move_to_end(slot)
            return
        slots[slot] = None
        self._recount(slot.key, len(slots) - 1, len(slots))

    def busy(self, slot: Slot) -> None:
        slots = self._idle.get(slot.key)
        if slots is None or slots.pop(slot, False) is False:
            return
        self._recount(slot.key, len(slots) + 1, len(slots))
        if not slots:
            del self._idle[slot.key]

    def release(self, slot: Slot) -> None:
        counts = self._refusing if slot.refusing else self._open
        left = counts[slot.key] - 1
        if left:
            counts[slot.key] = left
        else:
            del counts[slot.key]
        if slot.refusing:
            self.refusing_total -= 1
            return
        self.open_total -= 1
        self.busy(slot)
        if self.metrics is not None:
            self.metrics.gauge_add("connections_open", -1)

    def _recount(self, key: str, before: int, after: int) -> None:
        if before:
            bucket = self._by_idle_count[before]
            del bucket[key]
            if not bucket:
                del self._by_idle_count[before]
        if after:
            self._by_idle_count.setdefault(after, OrderedDict())[key] = None
        # Counts move by one, so the largest is found by stepping.
        self._most_idle = max(self._most_idle, after)
        while self._most_idle and self._most_idle not in self._by_idle_count:
            self._most_idle -= 1

    def _evict(self) -> bool:
        if not self._most_idle:
            return False
        key = next(iter(self._by_idle_count[self._most_idle]))
        victim = next(iter(self._idle[key]))
        victim.release()
        self.count("connections_evicted_total")
        if victim.closer is not None:
            victim.closer()
        return True


# ---------------------------------------------------------------------- protocols


class _Answered(Exception):
    """Raised in a parser callback to stop parsing once the relay has answered."""


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for every request's headers, a
    cap on their size, a 503 for connections over a cap, and its place given back."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        slot: Slot,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.slot = slot
        self.limits = slot.guard.limits
        self._header_timer: asyncio.TimerHandle | None = None
        # Bytes of the current request's line and headers, as the parser reports them
        # (complete lines only)...
        self._header_bytes = 0
        # ...and all bytes received since the relay began waiting for a request, which
        # also counts a line that never ends (the parser would buffer it unbounded).
        self._waiting_bytes = 0
        self._answered = False

    # -- lifecycle
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.slot.closer = transport.abort
        if self.slot.released:  # evicted while its handshake finished
            transport.abort()
            return
        self._await_headers(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        try:
            super().connection_lost(exc)
        finally:
            self.slot.release()

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, except that a request the relay has already answered (431,
        # 503) is not answered again with a 400 and a warning per connection.
        if self._answered:
            return
        self._unset_keepalive_if_required()
        self._waiting_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            if isinstance(error.__context__, _Answered):
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # Still waiting for the headers (the timer stops when they are complete):
        # past the cap, they are too large whether or not they would ever end.
        if self._header_timer is not None and self._waiting_bytes > self.limits.max_header_bytes:
            self._headers_too_large()

    # -- request phases
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        if self.slot.reason is not None:
            retry_after = str(self.limits.retry_after).encode()
            self._answer(503, self.slot.reason, [(b"retry-after", retry_after)])
        self.slot.guard.busy(self.slot)
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn arms its keep-alive timer exactly when no pipelined request is
        # waiting: the connection is idle until the next request.
        if self.timeout_keep_alive_task is not None:
            self.slot.guard.idle(self.slot)
            self._await_headers(max(self.limits.header_timeout, self.limits.keep_alive_timeout))

    def handle_websocket_upgrade(self) -> None:
        self._stop_header_timer()
        super().handle_websocket_upgrade()
        protocol = self.transport.get_protocol()
        if isinstance(protocol, GuardedWebSocketProtocol):
            protocol.slot = self.slot
        else:
            # Nothing would give the place back when it closes: better undercount.
            self.slot.release()

    # -- helpers
    def _await_headers(self, timeout: float) -> None:
        self._stop_header_timer()
        self._waiting_bytes = 0
        self._header_timer = self.loop.call_later(timeout, self._headers_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.slot.guard.count("connections_timed_out_total")
            # Not close(): that waits for a TLS close_notify a stalled peer never sends.
            self.transport.abort()

    def _count_header_bytes(self, amount: int) -> None:
        self._header_bytes += amount
        if self._header_bytes > self.limits.max_header_bytes:
            self._headers_too_large()
            raise _Answered

    def _headers_too_large(self) -> None:
        self.slot.guard.count("requests_headers_too_large_total")
        self._refuse(431, HEADERS_TOO_LARGE)

    def _answer(
        self, status: int, refusal: Refusal, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> NoReturn:
        """From a parser callback: answer with a JSON error, close, stop parsing."""
        self._refuse(status, refusal, headers)
        raise _Answered

    def _refuse(
        self, status: int, refusal: Refusal, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """Answer with a JSON error and close."""
        self._answered = True
        self._stop_header_timer()
        body = json.dumps({"error": refusal.message, "code": refusal.code}).encode()
        head = [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            *(name + b": " + value + b"\r\n" for name, value in headers),
            b"\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, giving back its connection's place when it closes."""

    slot: Slot | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            if self.slot is not None:
                self.slot.release()


# ---------------------------------------------------------------------- listener


def _drop(conn: socket.socket) -> None:
    """Close at once with a reset: no TIME_WAIT state kept for a refused flood."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def listening_sockets(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every address `host` resolves to."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class GuardedListener(asyncio.AbstractServer):
    """Accepts on the listening sockets, admits each connection through the guard,
    and hands the admitted ones to asyncio's TLS with a handshake timeout.

    Stands in for the asyncio.Server that uvicorn's Server would create; uvicorn
    only calls close() and wait_closed() on it.
    """

    def __init__(
        self,
        sockets: list[socket.socket],
        loop: asyncio.AbstractEventLoop,
        ssl_context: ssl.SSLContext | None,
        protocol_factory: Callable[[Slot], asyncio.Protocol],
        guard: ConnectionGuard,
    ) -> None:
        self.sockets = sockets
        self._loop = loop
        self._ssl = ssl_context
        self._protocol_factory = protocol_factory
        self.guard = guard
        self._handshakes: set[asyncio.Task[None]] = set()
        self._serving = False
        self._summary: asyncio.TimerHandle | None = None
        self._last_summary: dict[str, int] = {}

    def start(self) -> None:
        self._serving = True
        for sock in self.sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)
        self._summary = self._loop.call_later(SUMMARY_INTERVAL_SECONDS, self._log_summary)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors or memory: leave the connections queued in
                    # the kernel for a moment rather than spin on a ready socket.
                    self.guard.count("accept_errors_total")
                    log.warning("accept failed (%s); pausing", errno.errorcode[error.errno])
                    self._loop.remove_reader(sock.fileno())
                    self._loop.call_later(ACCEPT_PAUSE_SECONDS, self._resume, sock)
                    return
                continue  # the peer gave up before accept (ECONNABORTED and the like)
            self._admit(conn, address)

    def _resume(self, sock: socket.socket) -> None:
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _admit(self, conn: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else str(address)
        slot = self.guard.admit(address_key(host))
        if slot is None:
            _drop(conn)
            return
        conn.setblocking(False)
        task = self._loop.create_task(self._handshake(conn, slot))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, slot: Slot) -> None:
        if slot.released:  # evicted before this task ran
            _drop(conn)
            return
        task = asyncio.current_task()
        assert task is not None
        slot.closer = task.cancel
        tls: dict[str, float] = {}
        if self._ssl is not None:
            tls = {
                "ssl_handshake_timeout": self.guard.limits.handshake_timeout,
                "ssl_shutdown_timeout": self.guard.limits.tls_shutdown_timeout,
            }
        try:
            await self._loop.connect_accepted_socket(
                functools.partial(self._protocol_factory, slot), conn, ssl=self._ssl, **tls
            )
        except asyncio.CancelledError:
            slot.release()  # evicted, or the relay is stopping; asyncio closed the socket
            raise
        except OSError:  # TLS errors and the handshake timeout are OSErrors too
            self.guard.count("tls_handshakes_failed_total")
            slot.release()
            conn.close()  # no-op if asyncio already has

    def _log_summary(self) -> None:
        counters = dict(self.guard.counters)
        changed = {k: v - self._last_summary.get(k, 0) for k, v in counters.items()}
        changed = {k: v for k, v in changed.items() if v}
        if changed:
            log.warning(
                json.dumps(
                    {
                        "event": "connection_limits",
                        "seconds": SUMMARY_INTERVAL_SECONDS,
                        **changed,
                        "open": self.guard.open_total,
                    },
                    separators=(",", ":"),
                )
            )
        self._last_summary = counters
        if self._serving:
            self._summary = self._loop.call_later(SUMMARY_INTERVAL_SECONDS, self._log_summary)

    # -- asyncio.AbstractServer
    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        if self._summary is not None:
            self._summary.cancel()
        for sock in self.sockets:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for task in list(self._handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if not self._serving:
            self.start()

    async def serve_forever(self) -> None:
        raise NotImplementedError("uvicorn's Server drives this listener")


# ---------------------------------------------------------------------- server


class GuardedServer(uvicorn.Server):
    """uvicorn's Server, listening through a GuardedListener."""

    def __init__(self, config: uvicorn.Config, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self.guard = guard

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's startup for a host and port, with the listener swapped in.
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        config = self.config
        loop = asyncio.get_running_loop()
        try:
            listening = sockets or listening_sockets(config.host, config.port, config.backlog)
        except OSError as error:
            # As uvicorn does: a bind error needs no traceback.
            logging.getLogger("uvicorn.error").error(error)  # noqa: TRY400
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)

        def protocol(slot: Slot) -> asyncio.Protocol:
            return GuardedHttpProtocol(
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=loop,
                slot=slot,
            )

        listener = GuardedListener(listening, loop, config.ssl, protocol, self.guard)
        listener.start()
        # uvicorn types this list as asyncio.Server; it calls close()/wait_closed() only.
        self.servers = [listener]  # type: ignore[list-item]
        self._log_started_message(listening)
        self.started = True


def app_metrics(app: object) -> Metrics | None:
    """The app's Metrics, to count connections beside its requests: `app.state.metrics`
    if set, else the one handed to its request-observing middleware."""
    found = getattr(getattr(app, "state", None), "metrics", None)
    if isinstance(found, Metrics):
        return found
    for middleware in getattr(app, "user_middleware", ()):
        candidate = getattr(middleware, "kwargs", {}).get("metrics")
        if isinstance(candidate, Metrics):
            return candidate
    return None


def serve(app: Any, limits: ConnectionLimits, **options: Any) -> None:
    """uvicorn.run(app, **options) for one process, with these connection limits."""
    limits = limits.within_descriptors(raise_descriptor_limit())
    config = uvicorn.Config(
        app, ws=GuardedWebSocketProtocol, timeout_keep_alive=limits.keep_alive_timeout, **options
    )
    metrics = app_metrics(app)
    if metrics is None:
        log.warning("the app exposes no Metrics: connection counts go to this log only")
    server = GuardedServer(config, ConnectionGuard(limits, metrics))
    server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
