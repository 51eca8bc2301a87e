from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.crypto import Argon2Params
from app.store import PassphraseProtector, Store

# Real Argon2id, at the floor the key file accepts, so the suite stays quick.
FAST = Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)
PASSPHRASE = "correct horse battery staple"


def protector(passphrase: str = PASSPHRASE) -> PassphraseProtector:
    return PassphraseProtector(passphrase, FAST)


@pytest.fixture
def profile(tmp_path: Path) -> Path:
    return tmp_path / "profile"


@pytest.fixture
def store(profile: Path) -> Iterator[Store]:
    opened = Store.create(profile, protector())
    yield opened
    opened.close()
