"""Connection hygiene (relay/connections.py) against a real relay process.

An attacker on loopback opens and holds idle connections of three kinds — TCP
only, TLS completed then silent, and slowloris (TLS, then half a request's
headers trickled a line at a time) — while a legitimate client on another
loopback address (all of 127.0.0.0/8 is loopback on Linux) keeps getting
`/health` and an authenticated request through. Every connection the attacker
held is closed by the relay; over a cap, clients get a 503 with `Retry-After`;
a push WebSocket outlives every idle timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import resource
import socket
import ssl
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from relay.cli import build_parser, connection_limits
from relay.connections import ConnectionGuard, ConnectionLimits, Slot, address_key
from tests.support.components import RelayProcess

HOST = "127.0.0.1"
LEGIT = "127.0.0.2"


# ---------------------------------------------------------------------- helpers


def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _tls(relay: RelayProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(relay.ca_file))


def _http(relay: RelayProcess, source: str, timeout: float = 10.0) -> httpx.Client:
    """A client whose connections come from `source`."""
    context = _tls(relay)
    transport = httpx.HTTPTransport(verify=context, local_address=source)
    return httpx.Client(base_url=relay.url, transport=transport, timeout=timeout)


def _register(relay: RelayProcess) -> tuple[str, str]:
    with _http(relay, HOST) as http:
        name = f"u{uuid.uuid4().hex[:12]}"
        answer = http.post("/v1/accounts", json={"username": name, "device_name": "laptop"})
        answer.raise_for_status()
        return name, str(answer.json()["token"])


def _metrics(relay: RelayProcess) -> dict[str, float]:
    with _http(relay, HOST) as http:
        text = http.get("/metrics").text
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.fullmatch(r"relay_([a-z_]+) ([0-9.e+-]+)", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def _open_descriptors(relay: RelayProcess) -> int:
    assert relay.process is not None
    return len(os.listdir(f"/proc/{relay.process.pid}/fd"))


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _raw_tls(relay: RelayProcess, source: str) -> ssl.SSLSocket:
    raw = socket.create_connection((HOST, relay.port), timeout=10, source_address=(source, 0))
    return _tls(relay).wrap_socket(raw, server_hostname=HOST)


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the relay closes `sock` (EOF or reset), False if still open after
    `timeout`. Anything the relay sends first is read and dropped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError, OSError):
            return True
    return False


def _reset(sock: socket.socket) -> None:
    """Close without leaving this side in TIME_WAIT (the test reuses source ports)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---------------------------------------------------------------------- attacker


@dataclass
class Tally:
    attempted: int = 0
    # The relay closed it, at once or after a timeout or eviction.
    closed_by_relay: int = 0
    # Never usable: reset while connecting or during TLS (the relay refusing it).
    refused: int = 0
    # Still open when the attacker gave up waiting: a connection the relay leaked.
    still_open: int = 0
    held_at_once: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)


async def _wait_closed(reader: asyncio.StreamReader, limit: float) -> bool:
    async def drain() -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError, OSError):
            while await reader.read(65536):
                pass

    try:
        await asyncio.wait_for(drain(), limit)
    except TimeoutError:
        return False
    return True


async def _trickle(writer: asyncio.StreamWriter) -> None:
    """Slowloris: a request line, then a header line now and then, never the end."""
    with contextlib.suppress(ConnectionError, ssl.SSLError, OSError, RuntimeError):
        writer.write(b"GET /health HTTP/1.1\r\nHost: relay\r\n")
        for number in range(1000):
            await asyncio.sleep(0.3)
            if writer.is_closing():
                return
            writer.write(b"X-Slow-%d: a\r\n" % number)


async def _hold_one(
    kind: str,
    source: str,
    port: int,
    context: ssl.SSLContext,
    limit: float,
    tally: Tally,
    budget: asyncio.Semaphore,
    held: list[int],
) -> None:
    async with budget:
        tally.attempted += 1
        tally.by_kind[kind] += 1
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    HOST,
                    port,
                    local_addr=(source, 0),
                    ssl=None if kind == "tcp" else context,
                    server_hostname=None if kind == "tcp" else HOST,
                ),
                limit,
            )
        except (OSError, ssl.SSLError, TimeoutError):
            tally.refused += 1
            return
        held[0] += 1
        tally.held_at_once = max(tally.held_at_once, held[0])
        trickle = asyncio.create_task(_trickle(writer)) if kind == "slowloris" else None
        try:
            if await _wait_closed(reader, limit):
                tally.closed_by_relay += 1
            else:
                tally.still_open += 1
        finally:
            held[0] -= 1
            if trickle is not None:
                trickle.cancel()
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


async def _attack(
    plan: list[tuple[str, str]],
    port: int,
    context: ssl.SSLContext,
    limit: float,
    budget: int,
    tally: Tally,
) -> None:
    """Opens the connections of `plan` ((kind, source address) each) with at most
    `budget` of them open at once, each held until the relay closes it."""
    semaphore = asyncio.Semaphore(budget)
    held = [0]
    tasks = []
    for kind, source in plan:
        # Start each only once the budget has room, so that tasks (and sockets)
        # do not pile up ahead of it.
        await semaphore.acquire()
        semaphore.release()
        tasks.append(
            asyncio.create_task(
                _hold_one(kind, source, port, context, limit, tally, semaphore, held)
            )
        )
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)


# ---------------------------------------------------------------------- the flood


FLOOD_ARGS = [
    "--handshake-timeout",
    "2",
    "--header-timeout",
    "2",
    "--keep-alive-timeout",
    "1",
    "--max-connections",
    "1000",
    "--max-connections-per-address",
    "100",
    "--refusal-slots",
    "32",
]


def _flood_plan(total: int) -> list[tuple[str, str]]:
    """A quarter of the attempts from one address (its cap bites), the rest spread
    over 30 (the total cap bites); one in forty completes TLS and stays silent, one
    in eighty is a slowloris, the rest never start TLS."""
    single = "127.0.1.1"
    spread = [f"127.0.2.{n}" for n in range(1, 31)]
    plan = []
    for number in range(total):
        source = single if number < total // 4 else spread[number % len(spread)]
        kind = "tls" if number % 40 == 7 else "slowloris" if number % 80 == 3 else "tcp"
        plan.append((kind, source))
    return plan


def test_flood_of_idle_connections_leaves_room_for_others(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    attempts, budget = 20_000, 1_500
    _raise_nofile(budget + 1_000)
    relay = relay_factory(extra_args=FLOOD_ARGS)
    _name, token = _register(relay)
    descriptors_before = _open_descriptors(relay)

    tally = Tally()
    # Longer than any timeout of the relay's plus time to be scheduled: a
    # connection still open after this was never going to be closed.
    hold_limit = 2 + 2 + 10
    attacker = threading.Thread(
        target=lambda: asyncio.run(
            _attack(_flood_plan(attempts), relay.port, _tls(relay), hold_limit, budget, tally)
        ),
        name="attacker",
    )
    started = time.monotonic()
    attacker.start()

    legit: list[tuple[int, int, float]] = []
    # While the attacker is still opening connections.
    while attacker.is_alive() and tally.attempted < attempts:
        round_started = time.monotonic()
        # A fresh client each round: a new connection has to get in during the flood.
        with _http(relay, LEGIT) as http:
            health = http.get("/health").status_code
            devices = http.get(
                "/v1/devices", headers={"Authorization": f"Bearer {token}"}
            ).status_code
        legit.append((health, devices, time.monotonic() - round_started))
        time.sleep(0.2)
    attacker.join(timeout=120)
    assert not attacker.is_alive(), "the attacker did not finish"
    elapsed = time.monotonic() - started

    seconds = [round(s, 2) for _, _, s in legit]
    print(
        f"\nflood: {tally.attempted} attempted in {elapsed:.1f} s, {tally.by_kind}; "
        f"at most {tally.held_at_once} held at once; {tally.closed_by_relay} closed by the "
        f"relay, {tally.refused} refused; legit rounds (s): {seconds}"
    )
    assert tally.attempted == attempts
    assert tally.still_open == 0, "connections the relay never closed"
    assert tally.closed_by_relay + tally.refused == attempts
    assert len(legit) >= 3
    assert all((health, devices) == (200, 200) for health, devices, _ in legit), legit

    metrics = _metrics(relay)
    print({k: v for k, v in metrics.items() if "connection" in k or "tls" in k})
    # Each cap bit, and the rest of the machinery ran.
    assert metrics["connections_over_limit_total"] > 0
    assert metrics["connections_dropped_total"] > 0
    assert metrics["connections_evicted_total"] > 0
    assert metrics["tls_handshakes_failed_total"] > 0
    # Every place given back: only the metrics request's own connection is open.
    assert metrics["connections_open"] <= 2
    _wait_for(
        lambda: _open_descriptors(relay) <= descriptors_before + 4,
        10,
        "the relay's open files back to where they were before the flood",
    )


# ---------------------------------------------------------------------- timeouts


def test_idle_connections_are_closed_after_their_timeouts(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory(
        extra_args=[
            "--handshake-timeout",
            "1",
            "--header-timeout",
            "1.5",
            "--keep-alive-timeout",
            "1",
            "--max-header-bytes",
            "4096",
        ]
    )
    before = _metrics(relay)
    descriptors_before = _open_descriptors(relay)

    tcp_only = [
        socket.create_connection((HOST, relay.port), source_address=(LEGIT, 0)) for _ in range(3)
    ]
    silent = [_raw_tls(relay, LEGIT) for _ in range(3)]
    slowloris = [_raw_tls(relay, LEGIT) for _ in range(2)]
    for sock in slowloris:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: relay\r\n")
    kept_alive = _raw_tls(relay, LEGIT)
    kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: relay\r\n\r\n")

    def trickle() -> None:
        # Bytes keep arriving, but the headers never end: the deadline still holds.
        for number in range(12):
            time.sleep(0.25)
            for sock in slowloris:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow-%d: a\r\n" % number)

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        for idle in [*tcp_only, *silent, *slowloris]:
            assert _closed_by_peer(idle, 10), "an idle connection was left open"
        # The keep-alive connection got its answer, then was closed for idling.
        answer = b""
        kept_alive.settimeout(10)
        while b"\r\n\r\n" not in answer:
            answer += kept_alive.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        assert _closed_by_peer(kept_alive, 10)
    finally:
        trickler.join()
        for opened in [*tcp_only, *silent, *slowloris, kept_alive]:
            _reset(opened)

    # Headers past the byte cap are answered 431 (not buffered until the timeout).
    oversized = _raw_tls(relay, LEGIT)
    try:
        oversized.sendall(b"GET /health HTTP/1.1\r\nHost: relay\r\nX-Big: " + b"a" * 5000)
        answer = b""
        oversized.settimeout(10)
        while chunk := oversized.recv(65536):
            answer += chunk
    finally:
        _reset(oversized)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"code": "headers_too_large"' in answer

    after = _metrics(relay)

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew("tls_handshakes_failed_total") == len(tcp_only)
    assert grew("connections_timed_out_total") == len(silent) + len(slowloris)
    assert grew("requests_headers_too_large_total") == 1
    _wait_for(
        lambda: _open_descriptors(relay) <= descriptors_before + 2,
        10,
        "the relay's open files back to where they were",
    )


# ---------------------------------------------------------------------- caps


def test_over_the_per_address_cap_a_client_gets_503_with_retry_after(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory(
        extra_args=[
            "--max-connections-per-address",
            "4",
            "--refusal-slots",
            "16",  # one per address
            "--header-timeout",
            "30",
            "--keep-alive-timeout",
            "30",
        ]
    )
    crowd = "127.0.0.3"
    held = [_raw_tls(relay, crowd) for _ in range(4)]
    try:
        # The fifth gets this address's refusal slot; while it holds that, a sixth
        # is closed before TLS.
        fifth = _raw_tls(relay, crowd)
        try:
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                _reset(_raw_tls(relay, crowd))
        finally:
            _reset(fifth)

        def refused_with_503() -> bool:
            try:
                with _http(relay, crowd) as http:
                    answer = http.get("/health")
            except httpx.TransportError:
                return False  # the refusal slot not given back yet: closed at once
            assert answer.status_code == 503
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["code"] == "too_many_connections"
            assert "address" in answer.json()["error"]
            assert int(answer.headers["retry-after"]) >= 1
            return True

        _wait_for(refused_with_503, 10, "a 503 for a connection over the cap")

        # Other addresses are served meanwhile.
        with _http(relay, "127.0.0.4") as http:
            assert http.get("/health").status_code == 200

        # A place given back is a place for the next connection.
        _reset(held.pop())

        def served() -> bool:
            with contextlib.suppress(httpx.TransportError), _http(relay, crowd) as http:
                return http.get("/health").status_code == 200
            return False

        _wait_for(served, 10, "a connection from the crowded address served again")
    finally:
        for sock in held:
            _reset(sock)
    metrics = _metrics(relay)
    assert metrics["connections_over_limit_total"] >= 2
    assert metrics["connections_dropped_total"] >= 1


def test_push_websocket_counts_against_the_cap_but_is_not_idle_timed_out(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory(
        extra_args=[
            "--handshake-timeout",
            "1",
            "--header-timeout",
            "1",
            "--keep-alive-timeout",
            "1",
            "--max-connections-per-address",
            "2",
        ]
    )
    recipient, token = _register(relay)
    _sender, sender_token = _register(relay)
    source = "127.0.0.5"
    with ws_connect(
        relay.url.replace("https://", "wss://") + "/v1/push",
        ssl=_tls(relay),
        additional_headers={"Authorization": f"Bearer {token}"},
        source_address=(source, 0),
        proxy=None,
    ) as push:
        idle = _raw_tls(relay, source)
        try:
            # The push connection and the idle one fill this address's cap.
            with _http(relay, source) as http:
                assert http.get("/health").status_code == 503
            # Well past every idle timeout: the idle connection is closed...
            assert _closed_by_peer(idle, 10)
        finally:
            _reset(idle)
        time.sleep(1.5)
        # ...and the push connection still delivers.
        with _http(relay, HOST) as http:
            sent = http.post(
                "/v1/messages",
                headers={"Authorization": f"Bearer {sender_token}"},
                json={
                    "messages": [
                        {
                            "id": "after-the-timeouts",
                            "recipient": recipient,
                            "device_id": 1,
                            "body": base64.b64encode(b"ciphertext").decode(),
                        }
                    ]
                },
            )
        sent.raise_for_status()
        while True:
            frame = push.recv(timeout=10)
            assert isinstance(frame, str)
            if '"envelope"' in frame:
                assert "after-the-timeouts" in frame
                break


# ---------------------------------------------------------------------- units


def test_cli_defaults_are_the_connection_limits_defaults() -> None:
    args = build_parser().parse_args(["serve", "--data", "/nonexistent"])
    assert connection_limits(args) == ConnectionLimits()
    names = {f.name for f in fields(ConnectionLimits)}
    assert names == {
        "handshake_timeout",
        "header_timeout",
        "keep_alive_timeout",
        "max_connections",
        "max_per_address",
        "refusal_slots",
        "max_header_bytes",
        "tls_shutdown_timeout",
    }


def test_cli_refuses_nonsense_limits(capsys: pytest.CaptureFixture[str]) -> None:
    for flag, value in (
        ("--handshake-timeout", "0"),
        ("--max-connections", "0"),
        ("--refusal-slots", "-1"),
    ):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--data", "/x", flag, value])
        assert flag in capsys.readouterr().err


def test_address_key_groups_an_ipv6_slash_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("fe80::1%eth0") == "fe80::/64"


def test_eviction_takes_the_address_with_most_idle_connections_first() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_connections=4, max_per_address=10))
    closed: list[str] = []

    def admit(key: str, label: str) -> Slot:
        slot = guard.admit(key)
        assert slot is not None
        assert not slot.refusing
        slot.closer = lambda: closed.append(label)
        return slot

    a0, a1, a2 = (admit("attacker", f"a{n}") for n in range(3))
    admit("visitor", "v")
    assert guard.open_total == 4
    # At the cap: the oldest idle of the address with the most idle goes.
    n1 = admit("newcomer", "n1")
    assert closed == ["a0"]
    assert a0.released
    assert guard.open_from("attacker") == 2
    # Busy connections (a request in flight, a WebSocket) are never taken.
    guard.busy(a1)
    guard.busy(a2)
    # visitor and newcomer tie at one idle each: the first to get there goes.
    n2 = admit("newcomer", "n2")
    assert closed == ["a0", "v"]
    # Now newcomer has two idle: its oldest goes.
    late = admit("late", "l")
    assert closed == ["a0", "v", "n1"]
    assert n1.released
    assert not n2.released
    # Idle again after a response: to the back of its address's line.
    guard.busy(n2)
    guard.idle(n2)
    guard.busy(late)
    guard.busy(n2)
    # All four busy: the next one is over the cap, answered from a refusal slot.
    refused = guard.admit("later")
    assert refused is not None
    assert refused.refusing
    assert closed == ["a0", "v", "n1"]
    assert guard.open_total == 4
    refused.release()
    late.release()
    late.release()  # idempotent
    assert guard.open_total == 3
    assert guard.refusing_total == 0
    assert guard.idle_from("newcomer") == 0


def test_refusal_slots_per_address_then_closed_at_once() -> None:
    guard = ConnectionGuard(ConnectionLimits(max_per_address=1, refusal_slots=32))
    assert guard.limits.refusals_per_address == 2
    admitted = guard.admit("a")
    assert admitted is not None
    assert not admitted.refusing
    refusals = [guard.admit("a"), guard.admit("a")]
    assert all(slot is not None and slot.refusing for slot in refusals)
    assert guard.admit("a") is None
    assert guard.counters == {"connections_over_limit_total": 3, "connections_dropped_total": 1}
    other = guard.admit("b")
    assert other is not None
    assert not other.refusing


def test_limits_fit_the_descriptor_budget() -> None:
    limits = ConnectionLimits(max_connections=10_000, refusal_slots=64)
    assert limits.within_descriptors(100_000) is limits
    assert limits.within_descriptors(4_096).max_connections == 4_096 - 256 - 64
    assert ConnectionLimits(keep_alive_timeout=30).retry_after == 30
