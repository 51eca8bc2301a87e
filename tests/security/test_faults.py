"""SIGKILL in the middle of a backup and of a restore: the last good state stays.

The headless CLI runs in a child process and is killed at random moments; after
each kill the folder still holds the previous backups, every one of which
verifies, no half-written file passes for a backup, and a killed restore leaves
the target profile either without a store (so the next attempt succeeds) or, if
the kill came after the final rename, completely restored.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.backup import engine, service
from app.backup.keys import format_key
from app.config import profile_dir
from app.store import Store
from tests.backup.conftest import populate
from tests.store.conftest import PASSPHRASE, protector
from tests.support.processes import python_env


def _cli(*argv: str, stdin: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "backup", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=python_env(),
        start_new_session=True,
    )
    assert process.stdin is not None
    process.stdin.write(stdin)
    process.stdin.close()
    return process


def _kill_when(process: subprocess.Popen[str], ready: Callable[[], bool]) -> bool:
    """SIGKILL as soon as `ready()`; True if killed, False if it finished first."""
    while not ready():
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return True


def _new_files_at_least(folder: Path, count: int) -> Callable[[], bool]:
    """Once the run has written `count` files (packs, temporaries, its index or
    snapshot) that were not in the folder before: somewhere in its middle."""
    before = set(folder.rglob("*"))

    def ready() -> bool:
        with contextlib.suppress(FileNotFoundError):  # a temporary renamed meanwhile
            return len(set(folder.rglob("*")) - before) >= count
        return False

    return ready


def _staging_then(parent: Path, name: str, delay: float) -> Callable[[], bool]:
    seen: list[float] = []

    def ready() -> bool:
        if not seen and list(parent.glob(f".{name}.restoring-*")):
            seen.append(time.monotonic())
        return bool(seen) and time.monotonic() - seen[0] >= delay

    return ready


@pytest.mark.slow
def test_killed_backups_and_restores_leave_the_last_good_state(tmp_path: Path) -> None:
    rng = random.Random(20261124)
    profile = profile_dir("alice")
    store = Store.create(profile, protector())
    populate(store, profile, messages=20_000, attachment_bytes=96 << 20)
    folder = tmp_path / "cloud"
    key = service.set_up_with_key(store, folder, keep=3)
    first = service.back_up_now(store, profile)
    store.close()

    kills = 0
    for run in range(6):
        # Something new each time: an incremental backup of nothing new writes only
        # its snapshot file, and would finish before any kill.
        (profile / "attachments" / f"new-{run}.bin").write_bytes(rng.randbytes(40 << 20))
        process = _cli("now", "--profile", "alice", "--passphrase-stdin", stdin=PASSPHRASE + "\n")
        kills += _kill_when(process, _new_files_at_least(folder, rng.randint(1, 4)))
        backups = engine.list_backups(folder)
        assert first.path in [b.path for b in backups] or len(backups) == 3
        for info in backups:
            engine.verify_backup(info.path, key)
    assert kills >= 4, "the kills all came too late to test anything"

    newest = engine.list_backups(folder)[0]
    mid_restore = []
    for attempt in range(6):
        target = profile_dir(f"alice-restored-{attempt}")
        process = _cli(
            "restore",
            "--profile",
            target.name,
            "--file",
            str(newest.path),
            "--key",
            "-",
            "--passphrase-stdin",
            stdin=f"restored passphrase\n{format_key(key)}\n",
        )
        killed = _kill_when(process, _staging_then(target.parent, target.name, rng.uniform(0, 0.3)))
        assert killed or process.returncode == 0
        if Store.exists(target):
            # Finished, or killed after the final rename: then it must be whole.
            _assert_restored(target)
        else:
            assert killed
            mid_restore.append(target)
    assert mid_restore, "every kill came after the restore had finished"
    # A killed restore leaves nothing that stops the next attempt.
    engine.restore_backup(newest.path, key, mid_restore[0], protector("restored passphrase"))
    _assert_restored(mid_restore[0])
    assert not list(mid_restore[0].parent.glob(f".{mid_restore[0].name}.restoring-*"))


def _assert_restored(target: Path) -> None:
    restored = Store.open(target, protector("restored passphrase"))
    try:
        assert len(restored.messages.search("eagle")) == 50
    finally:
        restored.close()
