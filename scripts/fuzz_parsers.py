"""Coverage-guided fuzzing of every untrusted-bytes parser with atheris.

    .venv/bin/python -m scripts.fuzz_parsers [--seconds-per-target 60] [--target NAME]

Same targets and allowed errors as the hypothesis suite (tests/security/parsers.py);
each target starts from its valid sample. Any other exception is a finding: the
input is written to build/fuzz-findings/ and the run exits 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from pathlib import Path

FINDINGS = Path("build/fuzz-findings")
# Listed here so the parent never imports (and so never pre-loads, uninstrumented)
# the modules under test; tests/security/test_parser_fuzz.py checks they match.
TARGET_NAMES = [
    "envelope",
    "content",
    "public identity",
    "sender key distribution",
    "group message",
    "attachment stream",
    "group change",
    "vault fleet bundle",
    "vault inner request",
    "vault sealed request",
    "vault response",
    "backup file",
    "backup chunks",
    "backup database entry",
    "key file",
]


def _fuzz_one(name: str, seconds: int) -> None:
    import atheris

    # A fresh (spawned) process, so the app's modules are imported — and
    # instrumented for coverage — here.
    with atheris.instrument_imports():
        from tests.security.parsers import TARGETS

    target = next(t for t in TARGETS if t.name == name)
    runs = 0

    def one_input(data: bytes) -> None:
        nonlocal runs
        runs += 1
        try:
            target.parse(data)
        except target.allowed:
            return
        except Exception:
            FINDINGS.mkdir(parents=True, exist_ok=True)
            (FINDINGS / f"{name.replace(' ', '-')}-{runs}.bin").write_bytes(data)
            raise

    FINDINGS.mkdir(parents=True, exist_ok=True)
    corpus = Path("build/fuzz-corpus") / name.replace(" ", "-")
    corpus.mkdir(parents=True, exist_ok=True)
    if target.sample:
        (corpus / "sample").write_bytes(target.sample)
    atheris.Setup(
        [
            sys.argv[0],
            f"-max_total_time={seconds}",
            "-max_len=8192",
            f"-artifact_prefix={FINDINGS}/",
            str(corpus),
        ],
        one_input,
    )
    atheris.Fuzz()  # exits the process when the time is up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds-per-target", type=int, default=60)
    parser.add_argument("--target", action="append", default=None)
    args = parser.parse_args()
    names = args.target or TARGET_NAMES
    context = multiprocessing.get_context("spawn")
    failed = 0
    for name in names:
        process = context.Process(target=_fuzz_one, args=(name, args.seconds_per_target))
        process.start()
        process.join()
        ok = process.exitcode == 0
        print(f"{'ok  ' if ok else 'FAIL'} {name} ({args.seconds_per_target}s)", flush=True)
        failed += not ok
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
