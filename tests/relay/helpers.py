from __future__ import annotations

import uuid

from app.net import RelayClient
from app.protocol.identity import DeviceIdentity, LocalPrekeys
from tests.support.components import RelayProcess


def client(relay: RelayProcess, **kwargs: object) -> RelayClient:
    return RelayClient(relay.url, relay.ca_file, **kwargs)  # type: ignore[arg-type]


def account(relay: RelayProcess, name: str | None = None, *, keys: int = 0) -> RelayClient:
    user = client(relay)
    user.register(name or f"user-{uuid.uuid4().hex[:10]}", "laptop")
    if keys:
        identity = DeviceIdentity.generate()
        user.upload_keys(LocalPrekeys.generate(batch=keys).upload_json(identity))
    return user
