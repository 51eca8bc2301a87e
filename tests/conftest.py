"""Fixtures that start real components on free loopback ports in temp dirs.

Later suites build on these; none of them skips when a program is missing: the
test command installs the Debian packages first, so a missing one is a failure.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path

# Qt must see this before any test imports PySide6.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("QT_LOGGING_RULES", "qt.qpa.*=false")

import pytest

from tests.support.components import (
    EtcdCluster,
    PostgresServer,
    RelayProcess,
    SoftHSMToken,
    Swtpm,
    VaultProcess,
    Xvfb,
)


def pytest_configure(config: pytest.Config) -> None:
    """Cyclic garbage is collected on the main thread only, between tests, as the
    app collects on its GUI thread (app/ui/garbage.py): a cycle holding a Qt widget
    must never be destroyed on a worker thread that happened to allocate."""
    gc.disable()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    gc.collect()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own Cipherline data root; nothing touches the user's profiles."""
    home = tmp_path / "cipherline-home"
    monkeypatch.setenv("CIPHERLINE_HOME", str(home))
    return home


@pytest.fixture
def softhsm_token(tmp_path: Path) -> SoftHSMToken:
    return SoftHSMToken(tmp_path / "softhsm").create()


@pytest.fixture
def swtpm(tmp_path: Path) -> Iterator[Swtpm]:
    tpm = Swtpm(tmp_path / "swtpm").start()
    yield tpm
    tpm.stop()


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def fresh_etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A cluster of one's own, for tests that stop and restart members."""
    cluster = EtcdCluster(tmp_path / "etcd").start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def xvfb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Xvfb]:
    display = Xvfb(tmp_path_factory.mktemp("xvfb")).start()
    yield display
    display.stop()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def make(name: str = "relay", **kwargs: object) -> RelayProcess:
        relay = RelayProcess(tmp_path / name, **kwargs).start()  # type: ignore[arg-type]
        started.append(relay)
        return relay

    yield make
    for relay in started:
        relay.stop()


@pytest.fixture
def relay(relay_factory: Callable[..., RelayProcess]) -> RelayProcess:
    return relay_factory()


@pytest.fixture
def vault_factory(tmp_path: Path) -> Iterator[Callable[..., VaultProcess]]:
    started: list[VaultProcess] = []

    def make(name: str = "vault", **kwargs: object) -> VaultProcess:
        node = VaultProcess(tmp_path / name, **kwargs).provision().start()  # type: ignore[arg-type]
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


@pytest.fixture
def vault_node(
    vault_factory: Callable[..., VaultProcess], softhsm_token: SoftHSMToken
) -> VaultProcess:
    """One vault node on a fresh SoftHSM2 token."""
    return vault_factory(backend="softhsm", token=softhsm_token)


@pytest.fixture
def secret_service(tmp_path: Path) -> Iterator[object]:
    """A real Secret Service (gnome-keyring-daemon on a private D-Bus session bus,
    tests/support/secret_service.py) as this test's system keyring: the bus address
    is this process's for the test, and `keyring` chooses its backend again with
    it, and again after."""
    from tests.support.secret_service import SecretService, redetect_keyring

    service = SecretService(tmp_path / "secret-service").start()
    previous = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    os.environ.update(service.env())
    redetect_keyring()
    try:
        yield service
    finally:
        service.stop()
        if previous is None:
            os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = previous
        redetect_keyring()
