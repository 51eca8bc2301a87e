"""Prometheus text exposition of counters, gauges and latencies. No label carries user
data: routes are templates (`/v1/users/{username}/keys`), never filled-in paths, and
every other label value is one of a fixed set of words chosen by the relay (a
quota's kind, a rate limit's kind, a prekey limit)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

Labels = tuple[tuple[str, str], ...]

# `# HELP` lines; a metric missing here is still exposed, only without one.
HELP: dict[str, str] = {
    "requests_total": "HTTP requests answered, by method, route template and status.",
    "request_seconds": "Time to answer an HTTP request, by route template.",
    "accounts_created_total": "Accounts registered.",
    "envelopes_queued_total": "Envelopes stored for a recipient device.",
    "envelopes_acked_total": "Envelopes acknowledged and deleted by their recipient.",
    "attachments_uploaded_total": "Attachments stored.",
    "mailbox_full_total": "Envelopes refused because the recipient device's mailbox was full.",
    "quota_refusals_total": "Writes refused by a per-account or per-device quota, by kind.",
    "rate_limited_total": "Requests refused with 429 by a rate limit, by kind.",
    "body_too_large_total": "Requests refused with 413 because their body passed the route's "
    "limit, by route template.",
    "prekey_withheld_total": "Key bundles served without one-time prekeys because a handout "
    "limit was reached, by limit (requester: one requester's share of one account; target: "
    "everyone's share of one account).",
    "prekey_drain_suspected_total": "Times a handout allowance of one-time prekeys ran out "
    "within its hour: someone took keys of an account faster than it hands them out.",
    "vault_failover_total": "Vault requests passed on to the next node after a failure.",
    "push_connections": "Open push WebSocket connections.",
    "mailbox_devices": "Device mailboxes holding at least one pending envelope.",
    "mailbox_envelopes": "Pending envelopes in all mailboxes.",
    "mailbox_bytes": "Bytes of pending envelope bodies in all mailboxes.",
    "mailbox_max_device_envelopes": "Pending envelopes in the fullest device mailbox.",
    "mailbox_max_device_bytes": "Bytes pending in the fullest device mailbox.",
}


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (
        (key, value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
        for key, value in labels
    )
    return "{" + ",".join(f'{key}="{value}"' for key, value in escaped) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _header(lines: list[str], name: str, kind: str) -> None:
    if name in HELP:
        lines.append(f"# HELP relay_{name} {HELP[name]}")
    lines.append(f"# TYPE relay_{name} {kind}")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self._buckets: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self._sums: dict[str, float] = defaultdict(float)
        self._counters: dict[str, dict[Labels, int]] = defaultdict(lambda: defaultdict(int))
        self._gauges: dict[str, int] = defaultdict(int)
        self._collectors: list[Callable[[], Mapping[str, float]]] = []

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, route, status)] += 1
            buckets = self._buckets[route]
            for index, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    buckets[index] += 1
            buckets[-1] += 1
            self._sums[route] += seconds

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        with self._lock:
            self._counters[name][tuple(sorted(labels.items()))] += amount

    def declare(self, name: str, label: str | None = None, values: Iterable[str] = ()) -> None:
        """Exposes a counter at 0 before its first event, so a dashboard or alert sees
        the series (and a rate of 0) rather than no data."""
        with self._lock:
            series = self._counters[name]
            if label is None:
                series[()] += 0
                return
            for value in values:
                series[((label, value),)] += 0

    def gauge_add(self, name: str, amount: int) -> None:
        with self._lock:
            self._gauges[name] += amount

    def collect(self, gauges: Callable[[], Mapping[str, float]]) -> None:
        """`gauges()` is called on every scrape for gauges computed then."""
        self._collectors.append(gauges)

    def render(self) -> str:
        # Collected outside the lock: a collector may read storage.
        collected: dict[str, float] = {}
        for collector in self._collectors:
            collected.update(collector())
        lines: list[str] = []
        with self._lock:
            _header(lines, "requests_total", "counter")
            for (method, route, status), value in sorted(self._requests.items()):
                request: Labels = (("method", method), ("route", route), ("status", str(status)))
                lines.append(f"relay_requests_total{_labels(request)} {value}")
            _header(lines, "request_seconds", "histogram")
            for route, buckets in sorted(self._buckets.items()):
                for bound, value in zip(BUCKETS, buckets, strict=False):
                    bucket: Labels = (("route", route), ("le", str(bound)))
                    lines.append(f"relay_request_seconds_bucket{_labels(bucket)} {value}")
                bucket = (("route", route), ("le", "+Inf"))
                lines.append(f"relay_request_seconds_bucket{_labels(bucket)} {buckets[-1]}")
                route_label = _labels((("route", route),))
                lines.append(f"relay_request_seconds_count{route_label} {buckets[-1]}")
                lines.append(f"relay_request_seconds_sum{route_label} {self._sums[route]:.6f}")
            for name, series in sorted(self._counters.items()):
                _header(lines, name, "counter")
                for labels, value in sorted(series.items()):
                    lines.append(f"relay_{name}{_labels(labels)} {value}")
            gauges: dict[str, float] = {**self._gauges, **collected}
        for name, number in sorted(gauges.items()):
            _header(lines, name, "gauge")
            lines.append(f"relay_{name} {_number(number)}")
        return "\n".join(lines) + "\n"
