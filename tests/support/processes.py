"""Process plumbing shared by the component launchers."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

_running: set[ManagedProcess] = set()


class ComponentError(RuntimeError):
    """A component could not be started; the message includes its log's tail."""


def require_program(name: str, package: str, extra_dirs: Sequence[str] = ()) -> str:
    path = shutil.which(name) or next(
        (str(Path(d) / name) for d in extra_dirs if (Path(d) / name).exists()), None
    )
    if path is None:
        raise ComponentError(
            f"{name} is not installed: run `make setup` as root, or `apt-get install {package}`"
        )
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """Distinct free ports, held open together so none is handed out twice."""
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            sockets.append(probe)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for probe in sockets:
            probe.close()


def free_consecutive_ports() -> tuple[int, int]:
    """Two free ports p and p+1 (the swtpm TCTI expects its control port at p+1)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port, port + 1
    raise ComponentError("no two consecutive free ports on loopback")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, process: ManagedProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.exited():
            raise ComponentError(f"{what}: process exited early\n{process.log_tail()}")
        try:
            if condition():
                return
        except Exception:
            pass
        time.sleep(0.05)
    tail = process.log_tail() if process is not None else ""
    raise ComponentError(f"{what}: not ready after {timeout:.0f}s\n{tail}")


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for our own Python programs: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO_ROOT), env.get("PYTHONPATH", "")] if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


class ManagedProcess:
    """A child in its own session with its output in a log file; stopped at exit."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
        pass_fds: Sequence[int] = (),
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._env = env
        self._cwd = cwd
        self._user = user
        self._pass_fds = tuple(pass_fds)
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only whatever the umask (and tightened if an earlier run left it
        # looser): a component's log (relay.log, vault.log) is the operator's.
        descriptor = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(descriptor, 0o600)
        log = os.fdopen(descriptor, "ab")
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
                user=self._user,
                start_new_session=True,
                pass_fds=self._pass_fds,
            )
        finally:
            log.close()
        _running.add(self)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def exited(self) -> bool:
        return self.popen is not None and self.popen.poll() is not None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def detach(self) -> None:
        """Let the process outlive us (the local dev stack is shared between launchers)."""
        _running.discard(self)

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup runs in the child."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)
        _running.discard(self)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(timeout=10)
        _running.discard(self)


@atexit.register
def _stop_everything() -> None:
    for process in list(_running):
        with contextlib.suppress(Exception):
            process.kill()
