"""The walking skeleton: relay over pinned HTTPS, vault naming its backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from app.net import RelayClient, RelayUnavailable
from tests.support.components import RelayProcess, VaultProcess


def test_relay_health_over_https_with_its_own_ca(relay: RelayProcess) -> None:
    client = RelayClient(relay.url, relay.ca_file)
    health = client.health()
    assert health["status"] == "ok"
    assert health["service"] == "relay"


def test_client_refuses_a_relay_signed_by_another_ca(
    relay: RelayProcess, relay_factory: object, tmp_path: Path
) -> None:
    other = RelayProcess(tmp_path / "other-relay").start()
    try:
        # The other relay's CA is genuine but is not the one pinned for this relay.
        client = RelayClient(relay.url, other.ca_file)
        with pytest.raises(RelayUnavailable):
            client.health()
    finally:
        other.stop()


def test_plain_http_is_not_served(relay: RelayProcess) -> None:
    with pytest.raises(requests.RequestException):
        requests.get(relay.url.replace("https://", "http://") + "/health", timeout=3)


def test_vault_health_names_its_backend(vault_node: VaultProcess) -> None:
    health = vault_node.health()
    assert health["status"] == "ok"
    assert health["backend"] == "softhsm"
    assert health["insecure"] is False
