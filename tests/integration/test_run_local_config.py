"""`make run` (scripts/run_local.py) gives each profile a server config that pins
the relay's sender-certificate key, so the dev app sends and accepts sealed mail
instead of falling back to authenticated sends, and the split vault's three
domains."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.config import SERVER_CONFIG_NAME, ServerConfig
from app.crypto import SigningKey
from app.protocol.identity import DeviceIdentity
from app.protocol.sealed import SenderCertificate
from app.services.sealing import pinned_keys
from scripts.run_local import DevStack, write_server_config
from tests.support.components import RelayProcess

# What `vault public-keys` prints; the relay part is what this test is about.
VAULT_KEYS = {"node": "node-1", "hpke_public_key": "11" * 32, "signing_public_key": "22" * 32}
DOMAIN_KEYS = [
    {"node": f"domain-{n}", "hpke_public_key": f"{n}a" * 32, "signing_public_key": f"{n}b" * 32}
    for n in (1, 2, 3)
]


def test_a_profile_made_as_make_run_does_pins_the_relays_certificate_key(
    tmp_path: Path, relay: RelayProcess
) -> None:
    config_path = tmp_path / "devstack" / "server.json"
    write_server_config(config_path, relay, VAULT_KEYS, DOMAIN_KEYS)
    profile = tmp_path / "profiles" / "alice"
    # What app/cli.py does with the launcher's --server-config.
    ServerConfig.load(config_path).save(profile / SERVER_CONFIG_NAME)

    pinned = pinned_keys(profile)
    relay_key = SigningKey(bytes.fromhex((relay.data_dir / "sender-certificate.key").read_text()))
    assert [key.to_bytes() for key in pinned] == [relay_key.verify_key().to_bytes()]
    # A certificate the relay signs is believed under the pinned key alone.
    identity = DeviceIdentity.generate().public.to_bytes()
    issued = SenderCertificate.issue(relay_key, "alice", 1, identity, 2**62)
    parsed = SenderCertificate.from_bytes(issued.to_bytes())
    parsed.verify(pinned, now=0)

    # The split vault: three domains, one pinned node each, every key its own.
    domains = ServerConfig.load(profile / SERVER_CONFIG_NAME).vault_domains
    assert [len(domain) for domain in domains] == [1, 1, 1]
    assert [vars(domain[0]) for domain in domains] == DOMAIN_KEYS
    pinned_keys_of_domains = [
        key
        for domain in domains
        for key in (domain[0].hpke_public_key, domain[0].signing_public_key)
    ]
    assert len(set(pinned_keys_of_domains)) == 6


def test_make_runs_split_vault_domains_start_reprovision_a_lost_memory_domain_and_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stack = DevStack(tmp_path / "devstack")
    stack.root.mkdir(mode=0o700)
    state: dict[str, Any] = {}
    try:
        swtpm = stack.ensure_swtpm(state)
        domains = stack.ensure_split_domains(state, swtpm)
        expected = ["softhsm" if shutil.which("softhsm2-util") else "soft"]
        expected.append("tpm" if swtpm is not None else "soft")
        assert [domain.backend for domain in domains] == [*expected, "memory"]
        keys = [domain.public_keys() for domain in domains]
        assert len({k["hpke_public_key"] for k in keys}) == 3
        assert len({k["signing_public_key"] for k in keys}) == 3

        # The relay an older launcher started, without the domains, is replaced.
        old = RelayProcess(stack.root / "relay", extra_args=["--vault", domains[0].url]).start()
        assert old.process is not None
        old.process.detach()
        state["relay"] = {"pid": old.process.pid, "port": old.port}
        relay = stack.ensure_relay(state, domains[0].url, [domain.url for domain in domains])
        assert old.process.exited() and relay.port == old.port
        assert state["relay"]["args"].count("--vault-domain") == 3
        config = write_server_config(stack.root / "server.json", relay, keys[0], keys)
        assert [vars(domain[0]) for domain in config.vault_domains] == keys

        # Each domain serves as its number and pins the other two's fleet keys.
        for number, info in state["split_vault"].items():
            peers = [key["hpke_public_key"] for n, key in enumerate(keys, 1) if str(n) != number]
            assert info["serve_args"][:2] == ["--domain", number]
            assert all(any(key in arg for arg in info["serve_args"]) for key in peers)

        # Launched again while everything serves: all of it is reused.
        pids_before = {n: info["pid"] for n, info in state["split_vault"].items()}
        again = stack.ensure_split_domains(state, swtpm)
        assert [domain.public_keys() for domain in again] == keys
        assert {n: info["pid"] for n, info in state["split_vault"].items()} == pids_before

        # A memory domain whose node and keyholder stopped comes back as a new domain.
        memory = state["split_vault"]["3"]
        for pid in (memory["pid"], memory["keyholder_pid"]):
            os.killpg(pid, signal.SIGTERM)
            psutil.Process(pid).wait(timeout=10)
        capsys.readouterr()
        renewed = stack.ensure_split_domains(state, swtpm)[2].public_keys()
        assert renewed["signing_public_key"] != keys[2]["signing_public_key"]
        assert "split-vault domain 3 lost its keys" in capsys.readouterr().out
        # The other two now pin the new domain 3, so they serve again with it.
        for number in ("1", "2"):
            info = state["split_vault"][number]
            assert info["pid"] != pids_before[number]
            assert f"3={renewed['hpke_public_key']}" in info["serve_args"]
        pids = [state["relay"]["pid"], *(d["pid"] for d in state["split_vault"].values())]
        pids += [state["split_vault"]["3"]["keyholder_pid"]]
        pids += [state["swtpm"]["pid"]] if swtpm is not None else []
    finally:
        stack.stop_services(state)
    assert not [pid for pid in pids if psutil.pid_exists(pid) and _running(pid)]
    assert "split_vault" not in state and "swtpm" not in state


def _running(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False
