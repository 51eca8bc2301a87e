"""Messages per second through the relay, and send-to-push latency.

Real relay process over HTTPS on loopback (SQLite), real accounts, one WebSocket
push connection per client. Each message is one authenticated `POST /v1/messages`
that is stored, then pushed to its recipient; a message counts once its push has
arrived. The limit, measured in the same run against the same server: a bare JSON
echo endpoint (`--bench-echo`) posted the same bodies with the same concurrency.
Target: throughput at least 50% of the echo; p99 send-to-push latency under 50 ms
at 100 messages/s.

The load comes from Python threads in this process, which on a small machine can
cost as much CPU as the relay itself, so the throughput ratios also measure the
load generator. The relay's own CPU time per message (from /proc) against its CPU
time per echo is reported beside them: that ratio is the server's alone.
"""

from __future__ import annotations

import base64
import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from app.net import RelayClient
from app.net.push import PushListener
from app.net.relay_client import Envelope, OutgoingEnvelope
from bench.harness import BenchReport, Comparison, Figure, percentile
from tests.support.components import RelayProcess

SENDERS = 8
BODY = os.urandom(200)


class Fleet:
    """N registered clients, each with a push connection, recording arrivals."""

    def __init__(self, relay: RelayProcess, count: int) -> None:
        self.relay = relay
        self.clients: list[RelayClient] = []
        self.names: list[str] = []
        self.listeners: list[PushListener] = []
        self.arrived: dict[str, float] = {}
        self.deliveries: dict[str, int] = {}
        self.lock = threading.Lock()
        for _ in range(count):
            client = RelayClient(relay.url, relay.ca_file)
            name = f"b{uuid.uuid4().hex[:12]}"
            client.register(name, "bench")
            self.names.append(name)
            self.clients.append(client)
            self.listeners.append(self._listen(client))

    def _listen(self, client: RelayClient) -> PushListener:
        """One push connection, started alone and awaited (see the note on retries)."""
        for _attempt in range(3):
            listener = PushListener(
                client.push_url(),
                str(self.relay.ca_file),
                str(client.token),
                on_envelope=self._arrived,
                on_state=lambda _connected: None,
            )
            listener.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if listener.connected:
                    return listener
                time.sleep(0.01)
            # websockets' sync client can hang in a failed TLS handshake; leave that
            # daemon thread behind and try a fresh connection.
            listener.stop()
        raise RuntimeError("a push connection did not come up")

    def _arrived(self, envelope: Envelope) -> None:
        now = time.perf_counter()
        with self.lock:
            self.arrived.setdefault(envelope.client_id, now)
            self.deliveries[envelope.client_id] = self.deliveries.get(envelope.client_id, 0) + 1

    def username(self, index: int) -> str:
        return self.names[index]

    def send(self, sender: int, recipient: int, message_id: str) -> None:
        self.clients[sender].send([OutgoingEnvelope(message_id, self.username(recipient), 1, BODY)])

    def wait_for(self, ids: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(i in self.arrived for i in ids):
                    return
            time.sleep(0.01)
        raise RuntimeError("not every message was pushed")

    def close(self) -> None:
        for listener in self.listeners:
            listener.stop()
        for client in self.clients:
            client.close()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _throughput(fleet: Fleet, total: int) -> float:
    count = len(fleet.clients)
    ids = [f"t{uuid.uuid4().hex}" for _ in range(total)]

    def one(index: int) -> None:
        fleet.send(index % count, (index + 1) % count, ids[index])

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        list(pool.map(one, range(total)))
    fleet.wait_for(ids)
    return total / (time.perf_counter() - started)


def _echo(relay: RelayProcess, total: int) -> float:
    local = threading.local()
    body = {
        "messages": [
            {
                "id": "x" * 33,
                "recipient": "b" * 13,
                "device_id": 1,
                "body": base64.b64encode(BODY).decode(),
            }
        ]
    }

    def one(_index: int) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        # Per request: a session-level `verify` loses to REQUESTS_CA_BUNDLE.
        response = local.session.post(
            f"{relay.url}/v1/bench/echo",
            json=body,
            headers={"Authorization": "Bearer " + "t" * 43},
            verify=str(relay.ca_file),
            timeout=30,
        )
        response.raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        list(pool.map(one, range(total)))
    return total / (time.perf_counter() - started)


def _latency(fleet: Fleet, rate: float, seconds: float) -> list[float]:
    count = len(fleet.clients)
    sent: dict[str, float] = {}
    interval = 1 / rate
    started = time.perf_counter()
    number = 0
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        while time.perf_counter() - started < seconds:
            target = started + number * interval
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            message_id = f"l{uuid.uuid4().hex}"
            sender = number % count
            sent[message_id] = time.perf_counter()
            pool.submit(fleet.send, sender, (sender + 1) % count, message_id)
            number += 1
    fleet.wait_for(list(sent))
    return [(fleet.arrived[i] - t) * 1000 for i, t in sent.items()]


def run(quick: bool) -> BenchReport:
    report = BenchReport("relay", quick)
    sizes = (1, 10) if quick else (1, 10, 100)
    total = 100 if quick else 2000
    with tempfile.TemporaryDirectory(prefix="cipherline-bench-relay-") as tmp:
        relay = RelayProcess(
            Path(tmp) / "relay",
            extra_args=["--bench-echo", "--rate", "1000000", "--address-rate", "1000000"],
        ).start()
        try:
            assert relay.process is not None
            assert relay.process.popen is not None
            pid = relay.process.popen.pid
            for size in sizes:
                fleet = Fleet(relay, size)
                try:
                    before = _cpu_seconds(pid)
                    ours = _throughput(fleet, total)
                    ours_cpu = (_cpu_seconds(pid) - before) / total
                    before = _cpu_seconds(pid)
                    echo = _echo(relay, total)
                    echo_cpu = (_cpu_seconds(pid) - before) / total
                    report.comparisons += [
                        Comparison(
                            f"{size} client(s): messages/s, send to push",
                            ours,
                            echo,
                            "msg/s",
                            "JSON echo",
                            0.5,
                        ),
                        # As a rate (1/CPU time) so that higher is better, like the rest.
                        Comparison(
                            f"{size} client(s): messages per relay CPU-second",
                            1 / max(ours_cpu, 1e-9),
                            1 / max(echo_cpu, 1e-9),
                            "msg/cpu-s",
                            "JSON echo",
                        ),
                    ]
                    if size == sizes[-1]:
                        latencies = _latency(fleet, 100, 2 if quick else 10)
                        report.figures += [
                            Figure(
                                f"push latency p50 at 100 msg/s, {size} clients",
                                percentile(latencies, 0.5),
                                "ms",
                            ),
                            Figure(
                                f"push latency p99 at 100 msg/s, {size} clients",
                                percentile(latencies, 0.99),
                                "ms",
                                50,
                            ),
                        ]
                finally:
                    fleet.close()
        finally:
            relay.stop()
    return report
