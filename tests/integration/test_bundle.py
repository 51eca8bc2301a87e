"""The PyInstaller bundle builds and its frozen program passes `--self-test`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT


@pytest.mark.slow
def test_frozen_bundle_passes_its_self_test(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level",
            "ERROR",
            "--distpath",
            str(tmp_path / "dist"),
            "--workpath",
            str(tmp_path / "build"),
            str(REPO_ROOT / "packaging" / "cipherline.spec"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    program = tmp_path / "dist" / "cipherline" / "cipherline"
    assert program.is_file()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    started = time.perf_counter()
    version = subprocess.run(
        [str(program), "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    cold_start = time.perf_counter() - started
    assert version.returncode == 0
    assert version.stdout.startswith("cipherline ")
    result = subprocess.run(
        [str(program), "--self-test"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test passed" in result.stdout
    assert "FAIL" not in result.stdout
    size = sum(p.stat().st_size for p in program.parent.rglob("*") if p.is_file())
    print(f"bundle {size / 2**20:.0f} MiB, frozen --version {cold_start:.2f}s")
