"""`make run` (scripts/run_local.py) gives each profile a server config that pins
the relay's sender-certificate key, so the dev app sends and accepts sealed mail
instead of falling back to authenticated sends."""

from __future__ import annotations

from pathlib import Path

from app.config import SERVER_CONFIG_NAME, ServerConfig
from app.crypto import SigningKey
from app.protocol.identity import DeviceIdentity
from app.protocol.sealed import SenderCertificate
from app.services.sealing import pinned_keys
from scripts.run_local import write_server_config
from tests.support.components import RelayProcess

# What `vault public-keys` prints; the relay part is what this test is about.
VAULT_KEYS = {"node": "node-1", "hpke_public_key": "11" * 32, "signing_public_key": "22" * 32}


def test_a_profile_made_as_make_run_does_pins_the_relays_certificate_key(
    tmp_path: Path, relay: RelayProcess
) -> None:
    config_path = tmp_path / "devstack" / "server.json"
    write_server_config(config_path, relay, VAULT_KEYS)
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
