"""Load on one relay: N clients with push connections sending for S seconds.

    .venv/bin/python -m scripts.load_relay [--clients 100] [--seconds 60] [--rate 2]

Each client sends `rate` messages per second to random others over HTTPS and
receives by WebSocket push. Reports errors (any exception or non-2xx answer),
messages sent and pushed, latency, and the relay's memory (RSS) over the run.
Exit status 0 only with zero errors, every message delivered exactly once and
memory growth after warm-up under the bound.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench.bench_relay import Fleet
from tests.support.components import RelayProcess

MEMORY_BOUND_MB = 64.0


@dataclass
class LoadReport:
    clients: int
    seconds: float
    sent: int
    delivered: int
    duplicates: int
    errors: int
    p50_ms: float
    p99_ms: float
    rss_after_warmup_mb: float
    rss_end_mb: float

    @property
    def ok(self) -> bool:
        growth = self.rss_end_mb - self.rss_after_warmup_mb
        return (
            self.errors == 0
            and self.delivered == self.sent
            and self.duplicates == 0
            and growth < MEMORY_BOUND_MB
        )


def run(clients: int = 100, seconds: float = 60, rate: float = 2.0) -> LoadReport:
    with tempfile.TemporaryDirectory(prefix="cipherline-load-") as tmp:
        relay = RelayProcess(Path(tmp) / "relay").start()
        try:
            assert relay.process is not None
            memory = psutil.Process(relay.process.pid)
            fleet = Fleet(relay, clients)
            counts = fleet.deliveries
            sent: dict[str, float] = {}
            errors: list[str] = []
            lock = threading.Lock()
            stop = time.monotonic() + seconds
            samples: list[tuple[float, float]] = []

            def client_loop(index: int) -> None:
                pace = random.Random(index)
                time.sleep(pace.uniform(0, 1 / rate))
                while time.monotonic() < stop:
                    peer = pace.randrange(clients - 1)
                    peer += peer >= index
                    message_id = f"L{uuid.uuid4().hex}"
                    try:
                        with lock:
                            sent[message_id] = time.perf_counter()
                        fleet.send(index, peer, message_id)
                    except Exception as error:  # noqa: BLE001 - every failure is counted
                        with lock:
                            errors.append(f"{type(error).__name__}: {error}"[:200])
                            del sent[message_id]
                    time.sleep(1 / rate)

            threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            while any(thread.is_alive() for thread in threads):
                samples.append((time.monotonic() - started, memory.memory_info().rss / 2**20))
                time.sleep(0.5)
            fleet.wait_for(list(sent), timeout=60)
            samples.append((time.monotonic() - started, memory.memory_info().rss / 2**20))
            latencies = [(fleet.arrived[i] - t) * 1000 for i, t in sent.items()]
            warm = [rss for at, rss in samples if at >= seconds * 0.25] or [samples[-1][1]]
            fleet.close()
            ordered = sorted(latencies)
            return LoadReport(
                clients=clients,
                seconds=seconds,
                sent=len(sent),
                delivered=sum(1 for i in sent if i in counts),
                duplicates=sum(max(0, counts.get(i, 0) - 1) for i in sent),
                errors=len(errors),
                p50_ms=statistics.median(ordered) if ordered else 0.0,
                p99_ms=ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0,
                rss_after_warmup_mb=warm[0],
                rss_end_mb=samples[-1][1],
            )
        finally:
            relay.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=2.0, help="messages/s per client")
    args = parser.parse_args()
    report = run(args.clients, args.seconds, args.rate)
    print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
