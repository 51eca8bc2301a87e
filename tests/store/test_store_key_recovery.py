"""The recovery wrapping of the store key, `store.recovery` (docs/store-key.md).

The vector is checked twice: against `RecoveryFile` byte for byte, and against the
spec rebuilt here from `cryptography`'s HKDF and AES-GCM directly, so a change to
either the code or the document that drifts from the other fails.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.backup import service
from app.store import Store, StoreCorrupt
from app.store.keyfile import (
    RECOVERY_COMMITMENT_INFO,
    RECOVERY_FILE_NAME,
    RECOVERY_WRAP_INFO,
    RecoveredKey,
    RecoveryDamaged,
    RecoveryFile,
    WrongRecoveryKey,
    read_recovery,
)
from tests.store.conftest import protector

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "store_key_recovery_v1.json"
DOC = Path(__file__).resolve().parents[2] / "docs" / "store-key.md"


def _vector() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(VECTORS.read_text())
    return loaded


CASES = _vector()["cases"]


class _Fixed:
    """Hands out the vector's salt, then its nonce, as `RecoveryFile.seal` asks."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    def random_bytes(self, length: int) -> bytes:
        chunk = self.chunks.pop(0)
        assert len(chunk) == length
        return chunk


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_the_vector_is_rebuilt_byte_for_byte(case: dict[str, str]) -> None:
    sealed = RecoveryFile.seal(
        bytes.fromhex(case["db_key"]),
        bytes.fromhex(case["backup_key"]),
        method=case["method"],
        vault_record_id=bytes.fromhex(case["vault_record_id"]),
        rng=_Fixed(bytes.fromhex(case["salt"]), bytes.fromhex(case["nonce"])),
    )
    assert sealed.to_json() == case["file"]
    assert sealed.associated_data().decode() == case["associated_data"]
    assert sealed.wrapped_key.hex() == case["wrapped_key"]
    parsed = RecoveryFile.from_json(case["file"])
    assert parsed == sealed
    assert parsed.open(bytes.fromhex(case["backup_key"])).hex() == case["db_key"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_the_vector_follows_the_spec_with_cryptography_directly(case: dict[str, str]) -> None:
    vector = _vector()
    assert vector["wrap_info"].encode() == RECOVERY_WRAP_INFO
    assert vector["commitment_info"].encode() == RECOVERY_COMMITMENT_INFO
    key, salt = bytes.fromhex(case["backup_key"]), bytes.fromhex(case["salt"])
    wrap = _hkdf(key, salt, vector["wrap_info"].encode())
    commitment = _hkdf(key, salt, vector["commitment_info"].encode())
    assert wrap.hex() == case["wrap_key"]
    assert commitment.hex() == case["commitment"]
    body = json.loads(case["file"])
    # Associated data: every field but nonce and wrapped_key, as sorted, compact JSON.
    header = {k: v for k, v in body.items() if k not in ("nonce", "wrapped_key")}
    associated = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert associated.decode() == case["associated_data"]
    assert base64.b64decode(body["commitment"]) == commitment
    assert base64.b64decode(body["salt"]) == salt
    opened = AESGCM(wrap).decrypt(
        base64.b64decode(body["nonce"]), base64.b64decode(body["wrapped_key"]), associated
    )
    assert opened.hex() == case["db_key"]


def test_the_document_carries_the_same_vector() -> None:
    text = DOC.read_text()
    for case in CASES:
        for field in ("backup_key", "salt", "nonce", "commitment", "wrapped_key"):
            assert case[field] in text, f"docs/store-key.md lacks {case['name']}'s {field}"


def test_a_wrong_backup_key_is_a_typed_error_and_opens_nothing() -> None:
    case = CASES[0]
    recovery = RecoveryFile.from_json(case["file"])
    wrong = bytearray.fromhex(case["backup_key"])
    wrong[31] ^= 1
    with pytest.raises(WrongRecoveryKey, match="does not open this profile"):
        recovery.open(bytes(wrong))
    assert not recovery.matches(bytes(wrong))
    assert recovery.matches(bytes.fromhex(case["backup_key"]))


@pytest.mark.parametrize(
    ("field", "change"),
    [
        (
            "wrapped_key",
            lambda v: base64.b64encode(
                bytes([base64.b64decode(v)[0] ^ 1]) + base64.b64decode(v)[1:]
            ).decode(),
        ),
        ("nonce", lambda v: base64.b64encode(bytes(12)).decode()),
        ("method", lambda v: "password"),
    ],
)
def test_a_tampered_file_is_a_typed_error(field: str, change: Any) -> None:
    case = CASES[0]
    body = json.loads(case["file"])
    body[field] = change(body[field])
    if field == "method":
        # Well-formed for the password method, so only the AEAD can notice.
        body["vault_record_id"] = "00" * 16
    tampered = RecoveryFile.from_json(json.dumps(body))
    with pytest.raises(RecoveryDamaged, match="failed authentication"):
        tampered.open(bytes.fromhex(case["backup_key"]))


def test_a_swapped_commitment_reads_as_a_wrong_key_not_as_success() -> None:
    first, second = (RecoveryFile.from_json(case["file"]) for case in CASES)
    body = json.loads(CASES[0]["file"])
    body["commitment"] = base64.b64encode(second.commitment).decode()
    swapped = RecoveryFile.from_json(json.dumps(body))
    with pytest.raises(WrongRecoveryKey):
        swapped.open(bytes.fromhex(CASES[0]["backup_key"]))
    # The right key for the swapped-in commitment passes it, then the AEAD refuses.
    with pytest.raises(RecoveryDamaged):
        RecoveryFile(
            first.method, second.salt, second.commitment, first.nonce, first.wrapped_key
        ).open(bytes.fromhex(CASES[1]["backup_key"]))


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"format": "something else", "version": 1}),
        json.dumps({"format": "cipherline-store-key-recovery", "version": True}),
    ],
)
def test_malformed_files_are_refused_before_any_key_is_tried(text: str) -> None:
    with pytest.raises(RecoveryDamaged):
        RecoveryFile.from_json(text)


def test_malformed_fields_are_refused() -> None:
    base = json.loads(CASES[1]["file"])
    edits: list[dict[str, object]] = [
        {"salt": base64.b64encode(bytes(31)).decode()},
        {"nonce": "%%%"},
        {"method": "scrypt"},
        {"vault_record_id": "zz" * 16},
        {"vault_record_id": "00" * 15},
        {"extra": 1},
        {"wrapped_key": base64.b64encode(bytes(10)).decode()},
    ]
    for edit in edits:
        with pytest.raises(RecoveryDamaged):
            RecoveryFile.from_json(json.dumps(base | edit))
    key_method = json.loads(CASES[0]["file"]) | {"vault_record_id": "00" * 16}
    with pytest.raises(RecoveryDamaged):
        RecoveryFile.from_json(json.dumps(key_method))


def test_a_newer_version_asks_for_an_update_rather_than_calling_it_damage() -> None:
    body = json.loads(CASES[0]["file"]) | {"version": 2}
    with pytest.raises(StoreCorrupt, match="update Cipherline") as raised:
        RecoveryFile.from_json(json.dumps(body))
    assert not isinstance(raised.value, RecoveryDamaged)


def test_repr_hides_the_wrapped_key() -> None:
    recovery = RecoveryFile.from_json(CASES[1]["file"])
    shown = repr(recovery)
    for secret in (recovery.wrapped_key, recovery.commitment, recovery.salt):
        assert secret.hex() not in shown
        assert base64.b64encode(secret).decode() not in shown
    assert "hidden" in repr(RecoveredKey(bytes(32)))


# ---- with a real store ----------------------------------------------------------------


def test_backups_set_up_write_it_and_it_opens_the_store_without_the_passphrase(
    profile: Path, tmp_path: Path
) -> None:
    store = Store.create(profile, protector())
    try:
        assert read_recovery(profile) is None
        key = service.set_up_with_key(store, tmp_path / "backups")
        recovery = read_recovery(profile)
        assert recovery is not None
        assert recovery.method == "key"
        assert (profile / RECOVERY_FILE_NAME).stat().st_mode & 0o777 == 0o600
        assert key not in (profile / RECOVERY_FILE_NAME).read_bytes()
        db_key = recovery.open(key)
    finally:
        store.close()
    reopened = Store.open(profile, RecoveredKey(db_key))
    reopened.close()
    # Turning backups off removes it: that key no longer opens the store.
    store = Store.open(profile, protector())
    try:
        service.turn_off(store, None, None)
        assert read_recovery(profile) is None
    finally:
        store.close()


def test_keep_recovery_current_writes_a_missing_one_and_replaces_a_stale_one(
    profile: Path, tmp_path: Path
) -> None:
    store = Store.create(profile, protector())
    try:
        key = service.set_up_with_key(store, tmp_path / "backups")
        (profile / RECOVERY_FILE_NAME).unlink()
        service.keep_recovery_current(store)
        first = read_recovery(profile)
        assert first is not None
        service.keep_recovery_current(store)
        assert read_recovery(profile) == first  # current: left as it is
        # One sealed under the same backup key for another store's key is stale.
        other = RecoveryFile.seal(bytes(32), key, method="key")
        (profile / RECOVERY_FILE_NAME).write_text(other.to_json())
        service.keep_recovery_current(store)
        fixed = read_recovery(profile)
        assert fixed is not None and fixed != other
        assert fixed.open(key) != bytes(32)
    finally:
        store.close()


def test_the_recovered_key_is_proven_on_the_database(profile: Path) -> None:
    Store.create(profile, protector()).close()
    with pytest.raises(StoreCorrupt, match="does not open with this key"):
        Store.open(profile, RecoveredKey(bytes(32)))
