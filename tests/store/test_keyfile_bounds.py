"""Argon2id costs in the key file are bounded on read, before any derivation.

The AEAD that authenticates the key file's header can only be checked after
Argon2id ran with the header's costs, so an edited file asking for terabytes of
memory (or days of passes) must be refused by looking at the numbers alone.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from app.crypto import Argon2Params
from app.store import Store, StoreCorrupt, keyfile
from app.store.keyfile import (
    MAX_KDF_MEMORY_KIB,
    MAX_KDF_PARALLELISM,
    MAX_KDF_TIME_COST,
    MAX_SALT_LENGTH,
    MIN_SALT_LENGTH,
    KeyFile,
    PassphraseProtector,
)
from tests.store.conftest import protector

TERABYTES_KIB = 4 * 1024**3  # 4 TiB, in KiB: still a valid u32 in the file


def _snapshot(profile: Path) -> dict[str, tuple[str, int]]:
    return {
        path.name: (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for path in sorted(profile.iterdir())
    }


def _no_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> bytes:
        raise AssertionError("Argon2id ran with costs from an edited key file")

    monkeypatch.setattr(keyfile, "argon2id", refuse)


def _edit(profile: Path, **kdf: Any) -> None:
    path = profile / "store.key"
    body = json.loads(path.read_text())
    body["kdf"].update(kdf)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize(
    ("edit", "sentence"),
    [
        ({"memory_cost_kib": TERABYTES_KIB - 1}, "KiB of memory, more than the 2097152 KiB"),
        ({"memory_cost_kib": MAX_KDF_MEMORY_KIB + 1}, "KiB of memory"),
        ({"time_cost": 2**32 - 1}, "passes, more than the 20"),
        ({"time_cost": MAX_KDF_TIME_COST + 1}, "passes"),
        ({"parallelism": 2**24}, "lanes, more than the 16"),
        ({"parallelism": MAX_KDF_PARALLELISM + 1}, "lanes"),
        ({"salt": "AA=="}, "salt is 1 bytes"),
        ({"salt": ""}, "salt is 0 bytes"),
        ({"salt": "QUFB" * 22}, "salt is 66 bytes"),
    ],
)
def test_an_edited_key_file_is_refused_instantly_and_nothing_is_touched(
    store: Store,
    profile: Path,
    monkeypatch: pytest.MonkeyPatch,
    edit: dict[str, Any],
    sentence: str,
) -> None:
    store.close()
    _edit(profile, **edit)
    before = _snapshot(profile)
    _no_argon2(monkeypatch)
    started = time.monotonic()
    with pytest.raises(StoreCorrupt, match="edited or is damaged") as refused:
        Store.open(profile, protector())
    assert time.monotonic() - started < 1.0
    assert sentence in str(refused.value)
    assert "nothing was derived or changed" in str(refused.value)
    assert _snapshot(profile) == before
    # Every reader refuses the same way: checking the passphrase, changing it.
    with pytest.raises(StoreCorrupt, match="edited or is damaged"):
        Store.verify_protector(profile, protector())
    with pytest.raises(StoreCorrupt, match="edited or is damaged"):
        Store.change_protection(profile, protector(), protector("another passphrase!"))
    assert _snapshot(profile) == before


def test_the_terabyte_file_is_refused_by_the_parser_alone(
    store: Store, profile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.close()
    _edit(profile, memory_cost_kib=TERABYTES_KIB - 1, time_cost=2**32 - 1)
    _no_argon2(monkeypatch)
    with pytest.raises(StoreCorrupt, match="KiB of memory"):
        KeyFile.from_json((profile / "store.key").read_text())


def test_the_floor_is_checked_on_read_too(store: Store, profile: Path) -> None:
    store.close()
    _edit(profile, memory_cost_kib=8)
    with pytest.raises(StoreCorrupt, match="below the safe minimum"):
        KeyFile.from_json((profile / "store.key").read_text())


def _key_file_text(time_cost: int, memory_kib: int, parallelism: int, salt: bytes) -> str:
    import base64

    return json.dumps(
        {
            "version": 1,
            "method": "passphrase",
            "nonce": base64.b64encode(bytes(12)).decode(),
            "wrapped_key": base64.b64encode(bytes(48)).decode(),
            "kdf": {
                "name": "argon2id",
                "time_cost": time_cost,
                "memory_cost_kib": memory_kib,
                "parallelism": parallelism,
                "salt": base64.b64encode(salt).decode(),
            },
        }
    )


def test_the_ceilings_themselves_are_accepted() -> None:
    for salt_length in (MIN_SALT_LENGTH, MAX_SALT_LENGTH):
        parsed = KeyFile.from_json(
            _key_file_text(
                MAX_KDF_TIME_COST, MAX_KDF_MEMORY_KIB, MAX_KDF_PARALLELISM, bytes(salt_length)
            )
        )
        assert parsed.kdf == Argon2Params(
            time_cost=MAX_KDF_TIME_COST,
            memory_cost_kib=MAX_KDF_MEMORY_KIB,
            parallelism=MAX_KDF_PARALLELISM,
        )
    # What Cipherline writes by default, and RFC 9106's first recommended option.
    for params in (Argon2Params(), Argon2Params(time_cost=1, memory_cost_kib=2 * 1024**2)):
        assert keyfile.kdf_problem(params, params.salt_length) is None


def test_the_ceilings_sit_above_what_cipherline_writes() -> None:
    default = Argon2Params()
    assert default.time_cost <= MAX_KDF_TIME_COST
    assert default.memory_cost_kib <= MAX_KDF_MEMORY_KIB
    assert default.parallelism <= MAX_KDF_PARALLELISM
    assert MIN_SALT_LENGTH <= default.salt_length <= MAX_SALT_LENGTH


def test_a_protector_never_writes_a_file_it_would_refuse() -> None:
    with pytest.raises(ValueError, match="memory"):
        PassphraseProtector("pass", Argon2Params(memory_cost_kib=MAX_KDF_MEMORY_KIB + 1))
    with pytest.raises(ValueError, match="salt"):
        PassphraseProtector("pass", Argon2Params(salt_length=8))
    with pytest.raises(ValueError, match="minimum"):
        PassphraseProtector("pass", Argon2Params(memory_cost_kib=64))


def test_a_key_file_hides_its_wrapped_key_in_its_repr(store: Store, profile: Path) -> None:
    store.close()
    parsed = KeyFile.from_json((profile / "store.key").read_text())
    shown = repr(parsed)
    for secret in (parsed.wrapped_key, parsed.salt, parsed.nonce):
        assert secret.hex() not in shown
        assert repr(secret) not in shown
    assert "passphrase" in shown
