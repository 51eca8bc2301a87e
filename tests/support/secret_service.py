"""A real Secret Service: gnome-keyring-daemon on a private D-Bus session bus.

The app keeps a profile's wrapping key in the OS keyring through `keyring`, whose
Linux backend speaks the freedesktop Secret Service API over the D-Bus session
bus. A test (or `make run` on a machine without a desktop session) gets the real
thing here instead of a fake backend:

- `dbus-daemon` with a minimal session config of our own, listening on a socket
  in a private 0700 folder. No service directories are listed, so nothing is
  ever D-Bus-activated with the user's real home (the system's session config
  would start the user's own gnome-keyring-daemon on first use).
- `gnome-keyring-daemon --foreground --components=secrets --unlock` on that bus,
  with HOME and the XDG folders inside `directory`. `--unlock` reads the login
  keyring's password on stdin: the daemon creates the "login" collection (the
  default one) with it on first start, and unlocks it with it later.

The password is generated and held in memory unless the caller passes one (the
dev stack keeps a persistent keyring; see scripts/run_local.py). It goes to the
daemon's stdin only, never into its arguments, environment or logs.

    service = SecretService(tmp_path / "secret-service").start()
    os.environ.update(service.env())  # what the app needs to find it
    ...
    service.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from contextlib import closing
from pathlib import Path
from types import TracebackType

from tests.support.processes import ComponentError, require_program, wait_until

SECRETS_BUS_NAME = "org.freedesktop.secrets"
_SESSION_CONFIG = """<busconfig>
  <type>session</type>
  <keep_umask/>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

_running: set[SecretService] = set()


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def secret_service_reachable(address: str | None = None) -> bool:
    """Whether a Secret Service is running, or can be activated, on the session bus
    at `address` (None: the bus this process's environment names)."""
    import secretstorage
    from jeepney.io.blocking import open_dbus_connection

    try:
        if address is None and not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return False
        with closing(open_dbus_connection(bus=address or "SESSION")) as connection:
            return bool(secretstorage.check_service_availability(connection))
    except Exception:  # no bus, a dead socket, a refused handshake: not reachable
        return False


class SecretService:
    """gnome-keyring-daemon's Secret Service on a D-Bus session bus of its own."""

    def __init__(self, directory: Path, *, password: str | None = None) -> None:
        self.directory = directory
        self._password = password if password is not None else secrets.token_urlsafe(24)
        self.address = ""
        self._socket_dir: Path | None = None
        self._bus: subprocess.Popen[bytes] | None = None
        self._daemon: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return (
            f"SecretService({str(self.directory)!r}, address={self.address!r}, <password hidden>)"
        )

    # ---- starting ---------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> SecretService:
        dbus_daemon = require_program("dbus-daemon", "dbus-daemon")
        keyring_daemon = require_program("gnome-keyring-daemon", "gnome-keyring")
        _private_dir(self.directory)
        home = _private_dir(self.directory / "home")
        runtime = _private_dir(self.directory / "runtime")
        # A short folder of its own for the socket: a pytest tmp_path can be longer
        # than the 107 bytes an AF_UNIX path may have.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="cl-bus-"))
        config = self.directory / "session-bus.conf"
        config.write_text(_SESSION_CONFIG.format(socket=self._socket_dir / "bus"))
        log = (self.directory / "secret-service.log").open("ab")
        try:
            self._bus = subprocess.Popen(
                [dbus_daemon, f"--config-file={config}", "--nofork", "--print-address=1"],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            _running.add(self)
            assert self._bus.stdout is not None
            self.address = self._bus.stdout.readline().decode().strip()
            self._bus.stdout.close()
            if not self.address:
                raise ComponentError(f"dbus-daemon did not start\n{self.log_tail()}")
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(home),
                "XDG_DATA_HOME": str(_private_dir(self.directory / "data")),
                "XDG_CONFIG_HOME": str(_private_dir(self.directory / "config")),
                "XDG_CACHE_HOME": str(_private_dir(self.directory / "cache")),
                "XDG_RUNTIME_DIR": str(runtime),
                "DBUS_SESSION_BUS_ADDRESS": self.address,
                "LANG": "C.UTF-8",
            }
            self._daemon = subprocess.Popen(
                [keyring_daemon, "--foreground", "--components=secrets", "--unlock"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            assert self._daemon.stdin is not None
            # No newline: the daemon takes every byte up to EOF as the password.
            self._daemon.stdin.write(self._password.encode())
            self._daemon.stdin.close()
        finally:
            log.close()
        try:
            wait_until(self._ready, timeout, "gnome-keyring-daemon's Secret Service")
        except ComponentError as error:
            self.stop()
            raise ComponentError(f"{error}\n{self.log_tail()}") from None
        return self

    def _ready(self) -> bool:
        for process, name in ((self._bus, "dbus-daemon"), (self._daemon, "gnome-keyring-daemon")):
            if process is None or process.poll() is not None:
                raise ComponentError(f"{name} exited early\n{self.log_tail()}")
        from jeepney.io.blocking import open_dbus_connection
        from secretstorage.collection import get_collection_by_alias

        with closing(open_dbus_connection(bus=self.address)) as connection:
            # The login collection exists, is the default one and is open: the
            # app's first `set_password` then needs no prompt.
            return not get_collection_by_alias(connection, "default").is_locked()

    def env(self) -> dict[str, str]:
        """What a process needs to use this keyring: the session bus's address."""
        return {"DBUS_SESSION_BUS_ADDRESS": self.address}

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self._daemon, self._bus) if p is not None]

    @property
    def socket_dir(self) -> Path | None:
        return self._socket_dir

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.directory / "secret-service.log").read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- stopping ---------------------------------------------------------------
    def detach(self) -> None:
        """Let both daemons outlive this process (the dev stack stops them by pid)."""
        _running.discard(self)

    def stop(self, timeout: float = 10.0) -> None:
        # The keyring first, so it never sees its bus vanish mid-write.
        for process in (self._daemon, self._bus):
            if process is None or process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        _running.discard(self)

    def __enter__(self) -> SecretService:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def redetect_keyring() -> None:
    """Makes `keyring` choose its backend again, as a new app process would: it
    remembers which backends were viable the first time it looked (on a bus that
    may be gone since), so that memory is cleared first."""
    import keyring.backend
    import keyring.core

    vars(keyring.backend.get_all_keyring).pop("saved_result", None)
    keyring.core.init_backend()


def stop_detached(pids: list[int], socket_dir: str | None = None, timeout: float = 10.0) -> None:
    """Stops daemons a detached `SecretService` left running (by the pids it recorded)."""
    import time

    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    if socket_dir:
        shutil.rmtree(socket_dir, ignore_errors=True)


@atexit.register
def _stop_everything() -> None:
    for service in list(_running):
        with contextlib.suppress(Exception):
            service.stop(timeout=2)
