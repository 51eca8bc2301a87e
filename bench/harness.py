"""What every benchmark reports, and how it is printed and saved.

A benchmark measures something of ours and a *limit* for it on the same machine
in the same run (raw AES-GCM, a bare echo endpoint, plain SQLite...), so the ratio
means something on any machine. Targets are checked by the harness and reported,
never asserted in unit tests.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Comparison:
    """One figure of ours against its limit.

    `higher_is_better` says which way the ratio should point: for throughput the
    ratio is ours/limit and should be at least `target`; for costs (latency, time)
    it is ours/limit and should be at most `target`.
    """

    name: str
    ours: float
    limit: float
    unit: str
    limit_name: str
    target: float | None = None
    higher_is_better: bool = True
    notes: str = ""

    @property
    def ratio(self) -> float:
        return self.ours / self.limit if self.limit else float("inf")

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target


@dataclass(frozen=True)
class Figure:
    """A measured value with an absolute target (for example "p99 under 50 ms")."""

    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = False
    notes: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.higher_is_better else self.value <= self.target


@dataclass
class BenchReport:
    name: str
    quick: bool
    comparisons: list[Comparison] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "benchmark": self.name,
            "quick": self.quick,
            "machine": {"python": platform.python_version(), "processor": platform.machine()},
            "comparisons": [
                {**asdict(c), "ratio": c.ratio, "met": c.met} for c in self.comparisons
            ],
            "figures": [{**asdict(f), "met": f.met} for f in self.figures],
        }

    def save(self, directory: Path = RESULTS_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    def table(self) -> str:
        def verdict(met: bool | None) -> str:
            return {None: "", True: "ok", False: "MISSED"}[met]

        lines = [f"== {self.name}{' (quick)' if self.quick else ''}"]
        for c in self.comparisons:
            sign = ">=" if c.higher_is_better else "<="
            target = f"target {sign} {c.target:g}" if c.target is not None else ""
            lines.append(
                f"  {c.name:<44} {c.ours:>12.2f} {c.unit:<8} vs {c.limit_name} "
                f"{c.limit:>12.2f}  ratio {c.ratio:6.3f} {target} {verdict(c.met)}"
            )
        for f in self.figures:
            sign = ">=" if f.higher_is_better else "<="
            target = f"target {sign} {f.target:g}" if f.target is not None else ""
            lines.append(f"  {f.name:<44} {f.value:>12.3f} {f.unit:<8} {target} {verdict(f.met)}")
        return "\n".join(lines)


def rate(operation: Callable[[], object], *, min_seconds: float, min_runs: int = 3) -> float:
    """Operations per second: the best of several timed batches (least disturbed)."""
    best = 0.0
    for _ in range(min_runs):
        count = 0
        start = time.perf_counter()
        while True:
            operation()
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds / min_runs:
                break
        best = max(best, count / elapsed)
    return best


def percentile(samples: list[float], fraction: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")
