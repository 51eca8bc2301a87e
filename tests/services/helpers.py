from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from app.config import SERVER_CONFIG_NAME, ServerConfig
from app.crypto import Argon2Params
from app.services.account import Profile, create_account
from app.services.client import Client
from app.services.events import Event
from tests.support.components import RelayProcess

FAST_KDF = Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)


def make_profile(root: Path, name: str, relay: RelayProcess) -> Profile:
    path = root / "profiles" / name
    path.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(relay.url, relay.ca_file.read_text())
    config.save(path / SERVER_CONFIG_NAME)
    return Profile.load(path)


class Person:
    def __init__(self, root: Path, name: str, relay: RelayProcess) -> None:
        self.name = name
        self.profile = make_profile(root, name, relay)
        messenger = create_account(self.profile, name, "laptop", f"{name} passphrase", kdf=FAST_KDF)
        self.client = Client(messenger, self.profile.relay(timeout=3), tick_seconds=0.2)
        self.events: list[Event] = []
        self.client.set_listener(self.events.append)
        self.client.start()

    def stop(self) -> None:
        self.client.stop()


def wait_for(condition: Callable[[], object], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
