"""`python -m bench [--quick] [NAME ...]`: run the benchmarks, print a table, save JSON."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
from pathlib import Path

import bench
from bench.harness import RESULTS_DIR, BenchReport


def discover() -> list[str]:
    return sorted(
        module.name.removeprefix("bench_")
        for module in pkgutil.iter_modules(bench.__path__)
        if module.name.startswith("bench_")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI smoke runs")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {discover()})"
    )
    args = parser.parse_args(argv)
    names = args.names or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    failures = 0
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        started = time.perf_counter()
        report: BenchReport = module.run(quick=args.quick)
        path = report.save(args.results)
        print(report.table())
        print(f"  ({time.perf_counter() - started:.1f}s, saved {path})")
        sys.stdout.flush()
        verdicts = [c.met for c in report.comparisons] + [f.met for f in report.figures]
        failures += verdicts.count(False)
    if failures:
        print(f"{failures} figure(s) missed their target", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
