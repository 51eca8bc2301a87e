#!/usr/bin/env python3
"""Run Cipherline against a local relay and vault node on loopback.

The first launcher starts the relay (SQLite) and one vault node (SoftHSM2 when
installed, otherwise the software backend, loudly labelled insecure) and records
them in the dev stack's state file. Further launchers (another --profile, so two
people can chat on one machine) reuse them. When the last app closes, the
services it started are stopped.

The system keyring: when this session's D-Bus has a Secret Service (GNOME Keyring,
KWallet, KeePassXC; running or activatable) the app uses it, as installed. When it
has none (no desktop session, a container, a server), the launcher starts one for
the dev stack: gnome-keyring-daemon on a private session bus
(tests/support/secret_service.py), and points only the app at it. Its keyring
lives in the dev stack's folder so that keyring-protected profiles open again on
the next run; its password is generated once and kept beside it in a 0600 file,
as the dev vault's SoftHSM PIN is. It stands in for a desktop keyring during
development only.

Without a display (no DISPLAY or WAYLAND_DISPLAY, no headless QT_QPA_PLATFORM) it
says so and exits 2 before starting anything, as `cipherline` itself does.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from app.cli import APP_UMASK, EXIT_NO_DISPLAY, NO_DISPLAY_MESSAGE, has_display  # noqa: E402
from app.config import ServerConfig, VaultNodeKey, data_root, make_private_dir  # noqa: E402
from tests.support.components import (  # noqa: E402
    RelayProcess,
    SoftHSMToken,
    VaultProcess,
    softhsm_library,
)
from tests.support.processes import ComponentError, free_port, python_env  # noqa: E402
from tests.support.secret_service import (  # noqa: E402
    SecretService,
    secret_service_reachable,
    stop_detached,
)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        # Reap it if it is our own exited child, or it would linger as a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DevStack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_path = root / "state.json"

    @contextlib.contextmanager
    def locked(self) -> Any:
        make_private_dir(self.root)
        with (self.root / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def load(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return state

    def save(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_path)

    # ----------------------------------------------------------------- services

    def ensure_relay(self, state: dict[str, Any], vault_url: str) -> RelayProcess:
        info = state.get("relay", {})
        relay = RelayProcess(
            self.root / "relay",
            port=info.get("port") or free_port(),
            extra_args=["--vault", vault_url],
        )
        if _alive(info.get("pid")):
            with contextlib.suppress(Exception):
                if relay.healthy():
                    return relay
        relay.start()
        assert relay.process is not None
        relay.process.detach()
        state["relay"] = {"pid": relay.process.pid, "port": relay.port}
        return relay

    def ensure_vault(self, state: dict[str, Any]) -> VaultProcess:
        info = state.get("vault", {})
        data_dir = self.root / "vault"
        if shutil.which("softhsm2-util"):
            token_dir = self.root / "softhsm"
            pin_file = self.root / "softhsm-pin"
            if pin_file.exists():
                token = SoftHSMToken(token_dir, pin=pin_file.read_text().strip())
            else:
                token = SoftHSMToken(token_dir, pin=secrets.token_hex(8)).create()
                fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as handle:
                    handle.write(token.pin)
            softhsm_library()
            # The node reads the PIN from this 0600 file (--pin-file), never from its
            # environment or command line.
            node = VaultProcess(
                data_dir,
                backend="softhsm",
                token=token,
                port=info.get("port") or free_port(),
                pin_file=pin_file,
            )
        else:
            print(
                "run: softhsm2 is not installed; the vault uses the INSECURE software backend.",
                file=sys.stderr,
            )
            node = VaultProcess(data_dir, backend="soft", port=info.get("port") or free_port())
        if _alive(info.get("pid")):
            with contextlib.suppress(Exception):
                if node.healthy():
                    return node
        if not (data_dir / "vault.json").exists():
            node.provision()
        node.start()
        assert node.process is not None
        node.process.detach()
        state["vault"] = {"pid": node.process.pid, "port": node.port, "backend": node.backend}
        return node

    def _keyring_password(self) -> str:
        path = self.root / "secret-service-password"
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password)
        return password

    def ensure_secret_service(self, state: dict[str, Any]) -> str | None:
        """The session bus address to give the app for its keyring, or None when
        this session already has a Secret Service (the user's own is kept)."""
        if secret_service_reachable():
            return None
        info = state.get("secret_service", {})
        address = info.get("address")
        pids = info.get("pids", [])
        alive = bool(pids) and all(_alive(pid) for pid in pids)
        if address and alive and secret_service_reachable(address):
            return str(address)
        if pids:
            stop_detached(pids, info.get("socket_dir"))
        service = SecretService(
            self.root / "secret-service", password=self._keyring_password()
        ).start()
        service.detach()
        state["secret_service"] = {
            "pids": service.pids,
            "address": service.address,
            "socket_dir": str(service.socket_dir),
        }
        return service.address

    def stop_services(self, state: dict[str, Any]) -> None:
        info = state.pop("secret_service", None)
        if info:
            stop_detached(info.get("pids", []), info.get("socket_dir"))
        for name in ("relay", "vault"):
            pid = state.get(name, {}).get("pid")
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
                for _ in range(100):
                    if not _alive(pid):
                        break
                    time.sleep(0.05)
            state.pop(name, None)


def write_server_config(
    path: Path, relay: RelayProcess, vault_keys: dict[str, str]
) -> ServerConfig:
    """The server config every dev profile gets (the app copies it into the profile,
    app/cli.py). It pins the relay's sender-certificate key beside its CA: a profile
    without it neither sends nor accepts sealed mail, so the dev app would fall back
    to authenticated sends and tell the relay who writes to whom."""
    config = ServerConfig(
        relay_url=relay.url,
        relay_ca_pem=relay.ca_file.read_text(),
        vault_nodes=(
            VaultNodeKey(
                node=vault_keys["node"],
                hpke_public_key=vault_keys["hpke_public_key"],
                signing_public_key=vault_keys["signing_public_key"],
            ),
        ),
        sender_certificate_keys=(relay.sender_certificate_key,),
    )
    config.save(path)
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="default")
    args = parser.parse_args()
    if not has_display():
        print(NO_DISPLAY_MESSAGE, file=sys.stderr)
        return EXIT_NO_DISPLAY
    # The dev stack's files (and the relay's and vault's, which inherit it) are private.
    os.umask(APP_UMASK)

    stack = DevStack(data_root() / "devstack")
    with stack.locked():
        state = stack.load()
        try:
            vault = stack.ensure_vault(state)
            relay = stack.ensure_relay(state, vault.url)
        except ComponentError as error:
            print(f"run: {error}", file=sys.stderr)
            return 1
        config_path = stack.root / "server.json"
        write_server_config(config_path, relay, vault.public_keys())
        try:
            bus_address = stack.ensure_secret_service(state)
        except ComponentError as error:
            # The app still runs; its first-run screen says why the keyring is off.
            print(f"run: no system keyring for the app: {error}", file=sys.stderr)
            bus_address = None
        keyring_note = (
            "the dev stack's keyring (gnome-keyring-daemon on a private bus)"
            if bus_address
            else "this session's keyring, if any"
        )
        app = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app",
                "--profile",
                args.profile,
                "--server-config",
                str(config_path),
            ],
            env=python_env({"DBUS_SESSION_BUS_ADDRESS": bus_address} if bus_address else None),
        )
        state.setdefault("clients", [])
        state["clients"] = [pid for pid in state["clients"] if _alive(pid)] + [app.pid]
        stack.save(state)
        print(
            f"run: relay {relay.url}, vault {vault.url} ({vault.backend});"
            f" profile {args.profile!r}; keyring: {keyring_note}"
        )

    def stop_requested(signum: int, _frame: object) -> None:
        # Passed on to the app; its exit ends the wait below as a normal close would.
        with contextlib.suppress(ProcessLookupError):
            app.send_signal(signum)

    # `make run` stopped by a terminal closing or by `kill`/`timeout`: the app is
    # closed the same way, and the stack stopped if it was the last one, instead of
    # leaving the relay, vault and keyring running with no app.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop_requested)
    try:
        returncode = app.wait()
    except KeyboardInterrupt:
        app.send_signal(signal.SIGINT)
        returncode = app.wait()

    with stack.locked():
        state = stack.load()
        state["clients"] = [
            pid for pid in state.get("clients", []) if pid != app.pid and _alive(pid)
        ]
        if not state["clients"]:
            stack.stop_services(state)
            print("run: last app closed; stopped the local relay and vault")
        stack.save(state)
    return returncode


if __name__ == "__main__":
    raise SystemExit(main())
