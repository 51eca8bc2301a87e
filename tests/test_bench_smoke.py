"""A tiny run of every benchmark: they work and write their figures (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO_ROOT, python_env


def test_every_benchmark_runs_quick_and_writes_ratios(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results", str(tmp_path)],
        cwd=REPO_ROOT,
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    reports = sorted(tmp_path.glob("*.json"))
    assert reports, "no benchmark wrote results"
    for path in reports:
        report = json.loads(path.read_text())
        assert report["quick"] is True
        assert report["comparisons"] or report["figures"], path.name
        for comparison in report["comparisons"]:
            assert comparison["limit"] > 0, (path.name, comparison)
            assert comparison["ratio"] > 0, (path.name, comparison)
