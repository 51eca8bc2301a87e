"""Runs the vault's sans-I/O flows over HTTP: through the relay, or straight to
nodes (tests, operators). Failover between nodes is the relay's job in production;
`DirectTransport` does the same for a list of node URLs."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import requests

from app.config import VaultNodeKey
from app.crypto import HpkePublicKey
from app.net.relay_client import RelayClient, RelayUnavailable
from app.protocol.vault import (
    PinnedNode,
    Reply,
    VaultRequest,
    VaultUnavailable,
    verify_fleet,
)
from app.protocol.vault_split import DomainRequest

T = TypeVar("T")
Transport = Callable[[str, bytes], Reply]


def run_flow(flow: Generator[VaultRequest, Reply, T], transport: Transport) -> T:
    try:
        request = next(flow)
        while True:
            reply = transport(request.op, request.body)
            request = flow.send(reply)
    except StopIteration as finished:
        result: T = finished.value
        return result


def run_split_flow(
    flow: Generator[list[DomainRequest], list[Reply], T], transports: Sequence[Transport]
) -> T:
    """Runs a split-vault flow: each batch goes to its domains at once (transport
    i - 1 reaches domain i), so a slow or dead domain costs one timeout, not three."""
    with ThreadPoolExecutor(max_workers=len(transports)) as pool:
        try:
            batch = next(flow)
            while True:
                futures = [
                    pool.submit(transports[request.domain - 1], request.op, request.body)
                    for request in batch
                ]
                batch = flow.send([future.result() for future in futures])
        except StopIteration as finished:
            result: T = finished.value
            return result


class DirectTransport:
    def __init__(self, node_urls: list[str], timeout: float = 10.0) -> None:
        self._urls = [url.rstrip("/") for url in node_urls]
        self._http = requests.Session()
        self._timeout = timeout

    def _each(self, method: str, path: str, body: bytes | None) -> Reply:
        for url in self._urls:
            try:
                response = self._http.request(
                    method,
                    url + path,
                    data=body,
                    headers={"Content-Type": "application/octet-stream"},
                    timeout=self._timeout,
                )
            except requests.RequestException:
                continue
            if response.status_code >= 500:
                continue
            return response.status_code, response.content
        return 503, b'{"error": "no vault node answered"}'

    def __call__(self, op: str, body: bytes) -> Reply:
        return self._each("POST", f"/v1/vault/{op}", body)

    def fleet(self) -> Reply:
        return self._each("GET", "/v1/vault/fleet", None)


class RelayTransport:
    """The relay's vault pass-through; with `domain`, to that split-vault domain."""

    def __init__(self, relay: RelayClient, domain: int | None = None) -> None:
        self._relay = relay
        self._domain = domain

    def __call__(self, op: str, body: bytes) -> Reply:
        try:
            return self._relay.vault_call(op, body, self._domain)
        except RelayUnavailable:
            return 503, b""

    def fleet(self) -> Reply:
        try:
            return self._relay.vault_fleet(self._domain)
        except RelayUnavailable:
            return 503, b""


def pinned_nodes(keys: tuple[VaultNodeKey, ...]) -> list[PinnedNode]:
    return [
        PinnedNode(
            key.node, bytes.fromhex(key.hpke_public_key), bytes.fromhex(key.signing_public_key)
        )
        for key in keys
    ]


def fleet_key(
    transport: DirectTransport | RelayTransport, pinned: list[PinnedNode]
) -> HpkePublicKey:
    status, body = transport.fleet()
    if status != 200:
        raise VaultUnavailable("the backup vault cannot be reached right now; try again later")
    return verify_fleet(body, pinned)
