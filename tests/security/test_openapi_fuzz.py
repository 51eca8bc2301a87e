"""schemathesis over the relay's and the vault's OpenAPI: no 5xx, no hang; and every
integer a relay request can carry, at its boundaries.

The relay runs as deployed apart from TLS: under uvicorn on a loopback port in this
process, with its lifespan (storage writer, janitor, push hub), on SQLite in a temp
dir, with rate limits high enough that generated requests reach the handlers. Relay
requests go anonymously and with the token of a fresh account per case, so the
authenticated handlers see generated bodies too, and one generated revocation does
not leave the rest unauthenticated. The vault runs in-process on the software
backend, which differs from SoftHSM2 only below the backend interface.
"""

from __future__ import annotations

import atexit
import itertools
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings

from relay.server import RelaySettings, create_app
from tests.support.processes import free_port
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

RELAY_APP = create_app(
    RelaySettings(
        data_dir=_WORK / "relay",
        rate_per_second=1e6,
        rate_burst=1e6,
        address_rate_per_second=1e6,
        address_rate_burst=1e6,
    )
)


def _serve_relay() -> str:
    server = uvicorn.Server(
        uvicorn.Config(RELAY_APP, host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True, name="fuzzed-relay")
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)

    atexit.register(stop)
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the relay under fuzzing did not start")
        time.sleep(0.02)
    return f"http://127.0.0.1:{server.config.port}"


RELAY_URL = _serve_relay()
_accounts = itertools.count()
_http = requests.Session()


def _account() -> tuple[str, str]:
    """A fresh account: (username, token)."""
    username = f"fuzzer{next(_accounts)}"
    response = _http.post(
        f"{RELAY_URL}/v1/accounts",
        json={"username": username, "device_name": "laptop"},
        timeout=10,
    )
    response.raise_for_status()
    return username, str(response.json()["token"])


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
    """schemathesis runs the ASGI lifespan around every call; the vault's shutdown
    closes its storage, so answer lifespan here and pass requests through."""

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


relay = schemathesis.openapi.from_url(f"{RELAY_URL}/openapi.json")
vault = schemathesis.openapi.from_asgi("/openapi.json", _without_lifespan(_vault_app()))


@relay.parametrize()
@FUZZ
def test_relay_never_answers_5xx(case: schemathesis.Case) -> None:
    _username, token = _account()
    for headers in ({}, {"Authorization": f"Bearer {token}"}):
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


# ---- every integer a relay request carries, at its boundaries ---------------------

# Around zero, the 32-bit edge, what a signed 64-bit column holds, and beyond it.
BOUNDARY_INTEGERS = (0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**70, -(2**63) - 1)
STORED_MIN, STORED_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class IntegerSlot:
    """One place a request carries an integer: a query or path parameter, or a
    body field at `pointer` (keys and list indexes from the body's root)."""

    method: str
    path: str
    where: str
    pointer: tuple[str | int, ...]
    schema: dict[str, Any]
    body: Any = None  # a body valid but for the slot (body slots only)

    @property
    def label(self) -> str:
        return f"{self.method} {self.path} {self.where}:{'.'.join(map(str, self.pointer))}"


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    options = [s for s in schema.get("anyOf", ()) if s.get("type") != "null"]
    return _resolve(spec, options[0]) if options else schema


def _sample(
    spec: dict[str, Any], schema: dict[str, Any], pointer: tuple[str | int, ...], username: str
) -> tuple[Any, list[tuple[tuple[str | int, ...], dict[str, Any]]]]:
    """A value valid for `schema`, with every optional field and one item in every
    list (so each integer is present), and the integers found in it."""
    schema = _resolve(spec, schema)
    kind = schema.get("type")
    if kind == "object":
        value: dict[str, Any] = {}
        found: list[tuple[tuple[str | int, ...], dict[str, Any]]] = []
        for name, field in schema.get("properties", {}).items():
            value[name], inner = _sample(spec, field, (*pointer, name), username)
            found += inner
        return value, found
    if kind == "array":
        item, found = _sample(spec, schema["items"], (*pointer, 0), username)
        return [item], found
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1))), [(pointer, schema)]
    if kind == "string":
        # Valid base64 and a valid message id; a recipient who exists.
        return (username if pointer and pointer[-1] == "recipient" else "AAAA"), []
    return None, []


def _integer_slots(spec: dict[str, Any], username: str) -> list[IntegerSlot]:
    slots: list[IntegerSlot] = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", ()):
                schema = _resolve(spec, parameter["schema"])
                if schema.get("type") == "integer":
                    slots.append(
                        IntegerSlot(
                            method.upper(), path, parameter["in"], (parameter["name"],), schema
                        )
                    )
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                body, found = _sample(spec, content["application/json"]["schema"], (), username)
                slots += [
                    IntegerSlot(method.upper(), path, "body", pointer, schema, body)
                    for pointer, schema in found
                ]
    return slots


def _with(body: Any, pointer: tuple[str | int, ...], value: int) -> Any:
    if not pointer:
        return value
    copy = dict(body) if isinstance(body, dict) else list(body)
    copy[pointer[0]] = _with(body[pointer[0]], pointer[1:], value)  # type: ignore[index]
    return copy


def _boundary_request(slot: IntegerSlot, value: int) -> requests.Response:
    username, token = _account()  # fresh: a value may remove or revoke the caller's device
    path = slot.path.replace("{username}", username)
    params: dict[str, int] = {}
    if slot.where == "path":
        path = path.replace("{" + str(slot.pointer[0]) + "}", str(value))
    elif slot.where == "query":
        params[str(slot.pointer[0])] = value
    return _http.request(
        slot.method,
        RELAY_URL + path,
        params=params,
        json=_with(slot.body, slot.pointer, value) if slot.where == "body" else None,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


_SPEC = _http.get(f"{RELAY_URL}/openapi.json", timeout=10).json()
_SLOTS = _integer_slots(_SPEC, "fuzzer-slots")


def test_every_integer_the_relay_takes_is_found_and_bounded() -> None:
    labels = {slot.label for slot in _SLOTS}
    # The walk must see these at least; a new integer anywhere joins them by itself.
    assert {
        "GET /v1/messages query:after",
        "GET /v1/messages query:limit",
        "DELETE /v1/devices/{device_id} path:device_id",
        "POST /v1/messages/ack body:seqs.0",
        "POST /v1/messages body:messages.0.device_id",
        "PUT /v1/keys body:one_time_prekeys.0.id",
        "PUT /v1/keys body:one_time_kem_prekeys.0.id",
    } <= labels, labels
    # Each is bounded; that the bounds fit storage is checked by the requests below
    # (FastAPI writes a model field's bounds into the document as floats, so 2**63 - 1
    # reads there as 2.0**63).
    for slot in _SLOTS:
        assert "minimum" in slot.schema, slot.label
        assert "maximum" in slot.schema, slot.label


@pytest.mark.parametrize("slot", _SLOTS, ids=lambda slot: slot.label)
def test_boundary_integers_are_refused_or_served_never_a_5xx(slot: IntegerSlot) -> None:
    for value in BOUNDARY_INTEGERS:
        response = _boundary_request(slot, value)
        context = (slot.label, value, response.status_code, response.text[:300])
        assert response.status_code < 500, context
        if response.status_code >= 400:
            assert isinstance(response.json()["error"], str), context
        declared = (
            slot.schema.get("minimum", -math.inf) <= value <= slot.schema.get("maximum", math.inf)
        )
        if not declared or not STORED_MIN <= value <= STORED_MAX:
            assert response.status_code == 422, context
