"""Prometheus text exposition of counters and latencies. No labels carry user data:
routes are templates (`/v1/users/{username}/keys`), never filled-in paths."""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self._sums: dict[str, float] = defaultdict(float)
        self._counters: dict[str, int] = defaultdict(int)
        self._gauges: dict[str, int] = defaultdict(int)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            buckets = self._buckets[route]
            for index, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[index] += 1
            buckets[-1] += 1
            self._sums[route] += seconds

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counters[name] += amount

    def gauge_add(self, name: str, amount: int) -> None:
        with self._lock:
            self._gauges[name] += amount

    def render(self) -> str:
        lines = ["# TYPE relay_requests_total counter"]
        with self._lock:
            for (method, route, status), value in sorted(self._requests.items()):
                lines.append(
                    f'relay_requests_total{{method="{method}",route="{route}",status="{status}"}}'
                    f" {value}"
                )
            lines.append("# TYPE relay_request_seconds histogram")
            for route, buckets in sorted(self._buckets.items()):
                for bound, value in zip(BUCKETS, buckets, strict=False):
                    lines.append(
                        f'relay_request_seconds_bucket{{route="{route}",le="{bound}"}} {value}'
                    )
                lines.append(
                    f'relay_request_seconds_bucket{{route="{route}",le="+Inf"}} {buckets[-1]}'
                )
                lines.append(f'relay_request_seconds_count{{route="{route}"}} {buckets[-1]}')
                lines.append(
                    f'relay_request_seconds_sum{{route="{route}"}} {self._sums[route]:.6f}'
                )
            for name, value in sorted(self._counters.items()):
                lines.append(f"# TYPE relay_{name} counter")
                lines.append(f"relay_{name} {value}")
            for name, value in sorted(self._gauges.items()):
                lines.append(f"# TYPE relay_{name} gauge")
                lines.append(f"relay_{name} {value}")
        return "\n".join(lines) + "\n"
