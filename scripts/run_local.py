#!/usr/bin/env python3
"""Run Cipherline against a local relay and vault node on loopback.

The first launcher starts the relay (SQLite) and one vault node (SoftHSM2 when
installed, otherwise the software backend, loudly labelled insecure) and records
them in the dev stack's state file. Beside them it starts the split vault's three
domains (docs/vault-protocol.md, "The split vault"), a single-node vault each on
a backend of its own: domain 1 SoftHSM2, domain 2 a TPM (an swtpm on loopback),
domain 3 `memory` (keys only in a keyholder process); the software backend stands
in, with a warning, for SoftHSM2 or the TPM when they are not installed. The
relay passes /v1/vault/domains/N/ to them, and the server config pins them.
Further launchers (another --profile, so two people can chat on one machine)
reuse them. When the last app closes, the services it started are stopped.

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
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from app.cli import APP_UMASK, EXIT_NO_DISPLAY, NO_DISPLAY_MESSAGE, has_display  # noqa: E402
from app.config import ServerConfig, VaultNodeKey, data_root, make_private_dir  # noqa: E402
from tests.support.components import (  # noqa: E402
    RelayProcess,
    SoftHSMToken,
    Swtpm,
    VaultProcess,
    softhsm_library,
)
from tests.support.processes import ComponentError, free_port, port_open, python_env  # noqa: E402
from tests.support.secret_service import (  # noqa: E402
    SecretService,
    secret_service_reachable,
    stop_detached,
)
from vault_emulator.config import ConfigError as NodeConfigError  # noqa: E402
from vault_emulator.config import NodeConfig  # noqa: E402
from vault_emulator.keyholder import KeyholderClient, KeyholderError  # noqa: E402

SPLIT_DOMAINS = (1, 2, 3)


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


def _stop_pid(pid: int | None) -> None:
    """SIGTERM to a service this dev stack started (each leads its own process
    group), then a short wait for it to go."""
    if pid is None or not _alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.05)


def _vault_healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
    except requests.RequestException:
        return False


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

    def ensure_relay(
        self, state: dict[str, Any], vault_url: str, domain_urls: Sequence[str]
    ) -> RelayProcess:
        info = state.get("relay", {})
        args = ["--vault", vault_url]
        for number, url in zip(SPLIT_DOMAINS, domain_urls, strict=True):
            args += ["--vault-domain", f"{number}={url}"]
        relay = RelayProcess(
            self.root / "relay", port=info.get("port") or free_port(), extra_args=args
        )
        # Reused only when started with these very arguments: a relay from an older
        # launcher (without the split vault's domains), or pointed at a node since
        # moved, is replaced, on the same port so that running apps find it again.
        if _alive(info.get("pid")) and info.get("args") == args:
            with contextlib.suppress(Exception):
                if relay.healthy():
                    return relay
        _stop_pid(info.get("pid"))
        relay.start()
        assert relay.process is not None
        relay.process.detach()
        state["relay"] = {"pid": relay.process.pid, "port": relay.port, "args": args}
        return relay

    def ensure_vault(self, state: dict[str, Any]) -> VaultProcess:
        info = state.get("vault", {})
        data_dir = self.root / "vault"
        if shutil.which("softhsm2-util"):
            pin_file = self.root / "softhsm-pin"
            token = self._softhsm_token(self.root / "softhsm", pin_file)
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

    @staticmethod
    def _softhsm_token(token_dir: Path, pin_file: Path) -> SoftHSMToken:
        """A SoftHSM2 token made once, its PIN kept in a 0600 file beside it."""
        if pin_file.exists():
            token = SoftHSMToken(token_dir, pin=pin_file.read_text().strip())
        else:
            token = SoftHSMToken(token_dir, pin=secrets.token_hex(8)).create()
            fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token.pin)
        softhsm_library()
        return token

    # ------------------------------------------------------- the split vault

    def ensure_swtpm(self, state: dict[str, Any]) -> Swtpm | None:
        """The TPM of split-vault domain 2, or None when swtpm or tpm2-tools is missing."""
        if not (shutil.which("swtpm") and shutil.which("tpm2_getrandom")):
            return None
        info = state.get("swtpm", {})
        swtpm = Swtpm(
            self.root / "swtpm", port=info.get("port") or 0, ctrl_port=info.get("ctrl_port") or 0
        )
        if _alive(info.get("pid")) and port_open(swtpm.port):
            return swtpm
        _stop_pid(info.get("pid"))
        if swtpm.port and (port_open(swtpm.port) or port_open(swtpm.ctrl_port)):
            # Another program took its ports meanwhile: new ones, and the TPM
            # domain's node is pointed at them (ensure_split_domain).
            swtpm.port = swtpm.ctrl_port = 0
        swtpm.start()
        assert swtpm.process is not None
        swtpm.process.detach()
        state["swtpm"] = {
            "pid": swtpm.process.pid,
            "port": swtpm.port,
            "ctrl_port": swtpm.ctrl_port,
        }
        return swtpm

    @staticmethod
    def _split_backend(number: int, swtpm: Swtpm | None) -> str:
        if number == 1:
            if shutil.which("softhsm2-util"):
                return "softhsm"
            print(
                "run: softhsm2 is not installed; split-vault domain 1 uses the INSECURE "
                "software backend.",
                file=sys.stderr,
            )
            return "soft"
        if number == 2:
            if swtpm is not None:
                return "tpm"
            print(
                "run: swtpm or tpm2-tools is not installed; split-vault domain 2 uses the "
                "INSECURE software backend.",
                file=sys.stderr,
            )
            return "soft"
        return "memory"

    def ensure_split_domains(
        self, state: dict[str, Any], swtpm: Swtpm | None
    ) -> list[VaultProcess]:
        """The three split-vault domains, each serving as its number with the other
        two's fleet keys pinned (re-sharing seals only to those). A domain serving
        with peers that have since changed (a memory domain provisioned afresh) is
        restarted with the new ones; its keys, token and keyholder stay."""
        nodes = [self.ensure_split_domain(state, number, swtpm) for number in SPLIT_DOMAINS]
        keys = [node.public_keys()["hpke_public_key"] for node in nodes]
        domains: dict[str, Any] = state["split_vault"]
        for number, node in zip(SPLIT_DOMAINS, nodes, strict=True):
            serve_args = [
                "--domain",
                str(number),
                *[
                    arg
                    for peer, key in zip(SPLIT_DOMAINS, keys, strict=True)
                    if peer != number
                    for arg in ("--peer-domain", f"{peer}={key}")
                ],
            ]
            info = domains[str(number)]
            if info.get("pid") is not None and info.get("serve_args") == serve_args:
                continue
            _stop_pid(info.get("pid"))
            node.extra_serve = serve_args
            node.start()
            assert node.process is not None
            node.process.detach()
            info.update(pid=node.process.pid, serve_args=serve_args)
        return nodes

    def ensure_split_domain(
        self, state: dict[str, Any], number: int, swtpm: Swtpm | None
    ) -> VaultProcess:
        """Split-vault domain `number`: one vault node in its own folder, with its
        own token, TPM PIN or keyholder, provisioned; its process is left serving
        if it still does, and is started by `ensure_split_domains`."""
        domains: dict[str, Any] = state.setdefault("split_vault", {})
        info: dict[str, Any] = domains.get(str(number), {})
        directory = self.root / "split-vault" / f"domain-{number}"
        backend = self._split_backend(number, swtpm)
        port = info.get("port") or free_port()
        serving = (
            info.get("backend") == backend and _alive(info.get("pid")) and _vault_healthy(port)
        )
        if not serving:
            _stop_pid(info.get("pid"))
            self._reset_split_domain(number, directory, backend, info, swtpm)
        data_dir = directory / "node"
        pin_file = directory / "node.pin"
        name = f"domain-{number}"
        if backend == "softhsm":
            token = self._softhsm_token(directory / "softhsm", pin_file)
            node = VaultProcess(
                data_dir, backend=backend, token=token, port=port, pin_file=pin_file, node_name=name
            )
        elif backend == "tpm":
            node = VaultProcess(
                data_dir, backend=backend, swtpm=swtpm, port=port, pin_file=pin_file, node_name=name
            )
        else:
            node = VaultProcess(data_dir, backend=backend, port=port, node_name=name)
        if serving:
            return node
        if not (data_dir / "vault.json").exists():
            node.provision()
        node.ensure_keyholder()
        keyholder_pid = info.get("keyholder_pid")
        if node.keyholder is not None and node.keyholder.process is not None:
            node.keyholder.process.detach()
            keyholder_pid = node.keyholder.process.pid
        domains[str(number)] = {
            "pid": None,
            "port": node.port,
            "backend": node.backend,
            "keyholder_pid": keyholder_pid if backend == "memory" else None,
        }
        return node

    def _reset_split_domain(
        self,
        number: int,
        directory: Path,
        backend: str,
        info: dict[str, Any],
        swtpm: Swtpm | None,
    ) -> None:
        """Before a domain's node starts: wipe the domain if what it was provisioned
        on is gone (it is then provisioned afresh), and point a TPM node at its TPM."""
        data_dir = directory / "node"
        try:
            config: NodeConfig | None = NodeConfig.load(data_dir)
        except NodeConfigError:
            config = None
        news = None
        if config is not None and config.backend != backend:
            news = f"was on {config.backend} and now uses {backend};"
        elif config is not None and backend == "memory":
            try:
                current = KeyholderClient(Path(config.keyholder_socket or ""), timeout=2)
                same = current.public_key().hex() == config.keyholder_public_key
            except KeyholderError:
                same = False
            if not same:
                news = (
                    "lost its keys with its keyholder process, as the memory backend "
                    "intends; wiping it and"
                )
        elif config is not None and swtpm is not None and config.tpm_tcti != swtpm.tcti:
            # The TCTI is only where the TPM listens; the TPM's state is the same.
            replace(config, tpm_tcti=swtpm.tcti).save(data_dir)
        if config is None or news is not None:
            if news is not None:
                print(f"run: split-vault domain {number} {news} provisioning it afresh.")
            # Half-provisioned or lost, whatever is left (a token, a keyholder) is of
            # no use to a fresh domain.
            _stop_pid(info.get("keyholder_pid"))
            shutil.rmtree(directory, ignore_errors=True)

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
            _stop_pid(state.pop(name, {}).get("pid"))
        for domain in state.pop("split_vault", {}).values():
            _stop_pid(domain.get("pid"))
            _stop_pid(domain.get("keyholder_pid"))
        swtpm = state.pop("swtpm", None)
        if swtpm and _alive(swtpm.get("pid")):
            tcti = Swtpm(self.root / "swtpm", port=swtpm.get("port") or 0).tcti
            # An orderly power-down first: without TPM2_Shutdown the next start counts
            # the node's last uses of its objects as failed PINs (swtpm locks out at 3).
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    ["tpm2_shutdown", "-T", tcti], capture_output=True, timeout=30, check=False
                )
            _stop_pid(swtpm.get("pid"))


def _node_key(keys: dict[str, str]) -> VaultNodeKey:
    """A node's pinned keys, from what `cipherline-vault public-keys` prints."""
    return VaultNodeKey(
        node=keys["node"],
        hpke_public_key=keys["hpke_public_key"],
        signing_public_key=keys["signing_public_key"],
    )


def write_server_config(
    path: Path,
    relay: RelayProcess,
    vault_keys: dict[str, str],
    domain_keys: Sequence[dict[str, str]] = (),
) -> ServerConfig:
    """The server config every dev profile gets (the app copies it into the profile,
    app/cli.py). It pins the relay's sender-certificate key beside its CA: a profile
    without it neither sends nor accepts sealed mail, so the dev app would fall back
    to authenticated sends and tell the relay who writes to whom. `domain_keys` are
    the split vault's domains in order, one node each (none: no split vault)."""
    config = ServerConfig(
        relay_url=relay.url,
        relay_ca_pem=relay.ca_file.read_text(),
        vault_nodes=(_node_key(vault_keys),),
        sender_certificate_keys=(relay.sender_certificate_key,),
        vault_domains=tuple((_node_key(keys),) for keys in domain_keys),
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
        config_path = stack.root / "server.json"
        try:
            vault = stack.ensure_vault(state)
            swtpm = stack.ensure_swtpm(state)
            domains = stack.ensure_split_domains(state, swtpm)
            relay = stack.ensure_relay(state, vault.url, [domain.url for domain in domains])
            write_server_config(
                config_path,
                relay,
                vault.public_keys(),
                [domain.public_keys() for domain in domains],
            )
        except ComponentError as error:
            print(f"run: {error}", file=sys.stderr)
            # What this launch started is in the state by now: stopped again unless
            # another launcher's app still uses the stack.
            if not any(_alive(pid) for pid in state.get("clients", [])):
                stack.stop_services(state)
            stack.save(state)
            return 1
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
        split = ", ".join(
            f"{number} {domain.url} ({domain.backend})"
            for number, domain in zip(SPLIT_DOMAINS, domains, strict=True)
        )
        print(
            f"run: relay {relay.url}, vault {vault.url} ({vault.backend});"
            f" split vault {split}; profile {args.profile!r}; keyring: {keyring_note}"
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
            print("run: last app closed; stopped the local relay, vault and split-vault domains")
        stack.save(state)
    return returncode


if __name__ == "__main__":
    raise SystemExit(main())
