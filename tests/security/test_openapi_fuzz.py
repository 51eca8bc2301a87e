"""schemathesis over the relay's and the vault's OpenAPI: no 5xx, no hang.

Both apps run in-process on their real storage (SQLite in a temp dir; the vault
on the software backend, which differs from SoftHSM2 only below the backend
interface). Relay requests go anonymously and with a valid account token, so the
authenticated handlers see generated bodies too.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

from relay.server import RelaySettings, create_app
from vault_emulator.backends import SoftBackend
from vault_emulator.config import NodeConfig
from vault_emulator.node import AuditLog, FleetSecrets, VaultNode
from vault_emulator.records import SqliteRecords
from vault_emulator.server import create_app as create_vault_app

FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)

# schemathesis loads schemas when the module is collected, so the apps exist then.
_WORK = Path(tempfile.mkdtemp(prefix="cipherline-fuzz-"))
atexit.register(shutil.rmtree, _WORK, True)

RELAY_APP = create_app(RelaySettings(data_dir=_WORK / "relay"))
# Not as a context manager: leaving one would run the app's shutdown and close storage.
TOKEN = (
    TestClient(RELAY_APP)
    .post("/v1/accounts", json={"username": "fuzzer", "device_name": "laptop"})
    .json()["token"]
)


def _vault_app() -> object:
    data = _WORK / "vault"
    data.mkdir()
    node = VaultNode(
        "node-1",
        SoftBackend(data, create=True),
        FleetSecrets.generate(),
        SqliteRecords(data / "records.sqlite3"),
        AuditLog(data / "audit.log", "node-1"),
    )
    return create_vault_app(NodeConfig(backend="soft", node_name="node-1"), node, insecure=True)


def _without_lifespan(app: Any) -> Any:
    """schemathesis runs the ASGI lifespan around every call; the apps' shutdown
    closes their storage, so answer lifespan here and pass requests through."""

    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        await app(scope, receive, send)

    return wrapper


relay = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan(RELAY_APP))
vault = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan(_vault_app()))


@relay.parametrize()
@FUZZ
def test_relay_never_answers_5xx(case: schemathesis.Case) -> None:
    for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
        response = case.call(headers=headers, timeout=10)
        # This relay has no vault behind it: its pass-through honestly answers 503.
        unavailable = response.status_code == 503 and case.path.startswith("/v1/vault")
        assert response.status_code < 500 or unavailable, (
            case.path,
            response.status_code,
            response.text[:300],
        )
        if response.status_code >= 400:
            assert "error" in response.json(), response.text[:300]


@vault.parametrize()
@FUZZ
def test_vault_never_answers_5xx(case: schemathesis.Case) -> None:
    response = case.call(timeout=10)
    assert response.status_code < 500, (case.path, response.status_code, response.text[:300])
