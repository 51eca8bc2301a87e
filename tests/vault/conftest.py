from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.crypto import HpkePublicKey
from app.net.vault_transport import DirectTransport, fleet_key
from app.protocol.vault import PinnedNode
from tests.support.components import EtcdCluster, SoftHSMToken, VaultProcess, write_private


def pins(nodes: list[VaultProcess]) -> list[PinnedNode]:
    result = []
    for node in nodes:
        keys = node.public_keys()
        result.append(
            PinnedNode(
                keys["node"],
                bytes.fromhex(keys["hpke_public_key"]),
                bytes.fromhex(keys["signing_public_key"]),
            )
        )
    return result


class Fleet:
    def __init__(self, nodes: list[VaultProcess]) -> None:
        self.nodes = nodes
        self.pinned = pins(nodes)
        self.transport = DirectTransport([n.url for n in nodes], timeout=10)

    def key(self) -> HpkePublicKey:
        return fleet_key(self.transport, self.pinned)


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    started: list[VaultProcess] = []

    def make(
        count: int = 1,
        backend: str = "softhsm",
        cluster: EtcdCluster | None = None,
        swtpm: object = None,
    ) -> Fleet:
        passphrase = tmp_path / "fleet-passphrase"
        write_private(passphrase, b"a one-time fleet passphrase")
        nodes: list[VaultProcess] = []
        # Fleets made in one test (the split vault's domains) get their own folders.
        first = len(started)
        for index in range(count):
            extra: list[str] = []
            if cluster is not None:
                extra += cluster.vault_client_args()
            if index > 0:
                exported = nodes[0].export_fleet(tmp_path / f"fleet-{first}.export", passphrase)
                extra += ["--join", str(exported), "--join-passphrase-file", str(passphrase)]
            token = None
            if backend == "softhsm":
                token = SoftHSMToken(tmp_path / f"token-{first + index}").create()
            node = VaultProcess(
                tmp_path / f"node-{first + index}",
                backend=backend,
                token=token,
                swtpm=swtpm,  # type: ignore[arg-type]
                node_name=f"node-{first + index + 1}",
                extra_init=extra,
            ).provision()
            nodes.append(node.start())
            started.append(node)
        return Fleet(nodes)

    yield make
    for node in started:
        node.stop()
