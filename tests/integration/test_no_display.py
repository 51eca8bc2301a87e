"""Issue #24: without a display, `make run` and `cipherline` say so and exit 2.

Before, Qt aborted with "libxcb-cursor0 is needed… Reinstalling the application
may fix this problem" (make: Error 250), after the launcher had started the relay
and the vault.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from app.cli import EXIT_NO_DISPLAY, NO_DISPLAY_MESSAGE, has_display
from tests.support.processes import REPO_ROOT, python_env

DISPLAY_VARIABLES = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")


def _headless_env(home: Path) -> dict[str, str]:
    env = python_env({"CIPHERLINE_HOME": str(home)})
    for name in DISPLAY_VARIABLES:
        env.pop(name, None)
    return env


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
            environ = process.info["environ"] or {}
        except (psutil.Error, TypeError):
            continue
        if process.pid != os.getpid() and (
            text in cmdline or environ.get("CIPHERLINE_HOME") == text
        ):
            found.append(f"{process.pid}: {cmdline}")
    return found


def _commands() -> list[list[str]]:
    commands = [
        [sys.executable, str(REPO_ROOT / "scripts" / "run_local.py"), "--profile", "alice"],
        [sys.executable, "-m", "app", "--profile", "alice"],
    ]
    console_script = Path(sys.executable).with_name("cipherline")
    if console_script.exists():
        commands.append([str(console_script), "--profile", "alice"])
    return commands


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11/Wayland only")
@pytest.mark.parametrize("command", _commands(), ids=lambda argv: Path(argv[-3]).name)
def test_without_a_display_it_says_so_and_exits_2_leaving_nothing_running(
    command: list[str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    result = subprocess.run(
        command,
        env=_headless_env(home),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_NO_DISPLAY == 2, result.stderr
    assert result.stderr.strip() == NO_DISPLAY_MESSAGE
    assert "no display found (DISPLAY/WAYLAND_DISPLAY unset)" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was started: no dev stack state, no profile, no relay or vault.
    assert not (home / "devstack" / "state.json").exists()
    assert not home.exists()
    assert _processes_mentioning(str(home)) == []


def test_display_detection() -> None:
    linux = sys.platform.startswith("linux")
    assert has_display({"DISPLAY": ":0"})
    assert has_display({"WAYLAND_DISPLAY": "wayland-0"})
    assert has_display({"QT_QPA_PLATFORM": "offscreen"})
    assert has_display({"QT_QPA_PLATFORM": "minimal"})
    assert has_display({"QT_QPA_PLATFORM": "wayland;xcb", "DISPLAY": ":1"})
    assert has_display({}) is not linux
    assert has_display({"DISPLAY": ""}) is not linux
    assert has_display({"QT_QPA_PLATFORM": "xcb", "WAYLAND_DISPLAY": "w"}) is not linux
