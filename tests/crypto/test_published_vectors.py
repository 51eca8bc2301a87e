"""`app.crypto` against values published by others (tests/vectors/external/).

Each recipe is checked against its standard's own vectors: HKDF-SHA256 (RFC 5869
Appendix A), X25519 (RFC 7748 sections 5.2 and 6.1), Ed25519 (RFC 8032 section
7.1), AES-256-GCM (the GCM specification's test cases 13-16), ML-KEM-768 (NIST
ACVP key generation and Wycheproof decapsulation, final FIPS 203) and the KEM of
our HPKE suite (the hpke-pq draft's MLKEM768-X25519 vector). Where and why values
come from is in tests/vectors/external/README.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from app.crypto import (
    DecryptionError,
    DhPrivateKey,
    DhPublicKey,
    HpkePrivateKey,
    InvalidKey,
    InvalidSignature,
    KemPrivateKey,
    SigningKey,
    VerifyKey,
    aead_open,
    aead_seal,
    hkdf_sha256,
    hmac_sha256,
    hpke_open,
)

EXTERNAL = Path(__file__).resolve().parents[1] / "vectors" / "external"


def _load(name: str) -> Any:
    return json.loads((EXTERNAL / name).read_text())


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


def _ids(tests: list[dict[str, Any]], key: str = "name") -> list[str]:
    return [str(test[key]) for test in tests]


# ---- HKDF-SHA256: RFC 5869 Appendix A ----------------------------------------------
HKDF = _load("rfc5869_hkdf_sha256.json")["tests"]


@pytest.mark.parametrize("vector", HKDF, ids=_ids(HKDF))
def test_hkdf_sha256_rfc5869_appendix_a(vector: dict[str, Any]) -> None:
    salt = _h(vector["salt"])
    okm = hkdf_sha256(
        _h(vector["ikm"]), salt=salt or None, info=_h(vector["info"]), length=vector["length"]
    )
    assert okm.hex() == vector["okm"]
    # The extract step is HMAC-SHA256 keyed with the salt (HashLen zeros when absent).
    assert hmac_sha256(salt or bytes(32), _h(vector["ikm"])).hex() == vector["prk"]


def test_hkdf_sha256_empty_salt_is_the_absent_salt() -> None:
    # RFC 5869 A.3: "salt = (0 octets)"; both spellings must give the published OKM.
    vector = HKDF[2]
    assert vector["salt"] == ""
    for salt in (None, b""):
        okm = hkdf_sha256(_h(vector["ikm"]), salt=salt, info=b"", length=vector["length"])
        assert okm.hex() == vector["okm"]


# ---- X25519: RFC 7748 sections 5.2 and 6.1 ------------------------------------------
X25519 = _load("rfc7748_x25519.json")


@pytest.mark.parametrize("vector", X25519["scalar_mult"], ids=_ids(X25519["scalar_mult"]))
def test_x25519_rfc7748_section_5_2(vector: dict[str, Any]) -> None:
    scalar = DhPrivateKey(_h(vector["scalar"]))
    assert scalar.exchange(DhPublicKey(_h(vector["u"]))).hex() == vector["output"]


def test_x25519_rfc7748_section_5_2_iterated() -> None:
    vector = X25519["iterated"]
    k = u = _h(vector["start"])
    for round_number in range(1, 1001):
        k, u = DhPrivateKey(k).exchange(DhPublicKey(u)), k
        if round_number == 1:
            assert k.hex() == vector["after_1"]
    assert k.hex() == vector["after_1000"]


def test_x25519_rfc7748_section_6_1() -> None:
    vector = X25519["diffie_hellman"]
    alice = DhPrivateKey(_h(vector["alice_private"]))
    bob = DhPrivateKey(_h(vector["bob_private"]))
    assert alice.public_key().to_bytes().hex() == vector["alice_public"]
    assert bob.public_key().to_bytes().hex() == vector["bob_public"]
    shared = vector["shared_secret"]
    assert alice.exchange(DhPublicKey(_h(vector["bob_public"]))).hex() == shared
    assert bob.exchange(DhPublicKey(_h(vector["alice_public"]))).hex() == shared


# ---- Ed25519: RFC 8032 section 7.1 --------------------------------------------------
ED25519 = _load("rfc8032_ed25519.json")["tests"]


@pytest.mark.parametrize("vector", ED25519, ids=_ids(ED25519))
def test_ed25519_rfc8032_section_7_1(vector: dict[str, Any]) -> None:
    signing_key = SigningKey(_h(vector["secret_key"]))
    message = _h(vector["message"])
    assert signing_key.verify_key().to_bytes().hex() == vector["public_key"]
    # Ed25519 is deterministic: the signature must be the published one, byte for byte.
    assert signing_key.sign(message).hex() == vector["signature"]
    verify_key = VerifyKey(_h(vector["public_key"]))
    verify_key.verify(_h(vector["signature"]), message)
    with pytest.raises(InvalidSignature):
        verify_key.verify(_h(vector["signature"]), message + b"\x00")
    tampered = bytearray(_h(vector["signature"]))
    tampered[0] ^= 1
    with pytest.raises(InvalidSignature):
        verify_key.verify(bytes(tampered), message)


# ---- AES-256-GCM: the GCM specification, test cases 13-16 --------------------------
GCM = _load("gcm_spec_aes256_gcm.json")["tests"]


@pytest.mark.parametrize("vector", GCM, ids=_ids(GCM))
def test_aes_256_gcm_published_vectors(vector: dict[str, Any]) -> None:
    key, nonce, aad = _h(vector["key"]), _h(vector["iv"]), _h(vector["aad"])
    sealed = _h(vector["ciphertext"]) + _h(vector["tag"])
    # aead_seal returns ciphertext || 16-byte tag, the paper's C followed by its T.
    assert aead_seal(key, nonce, _h(vector["plaintext"]), aad) == sealed
    assert aead_open(key, nonce, sealed, aad) == _h(vector["plaintext"])
    flipped = bytearray(sealed)
    flipped[-1] ^= 0x80
    with pytest.raises(DecryptionError):
        aead_open(key, nonce, bytes(flipped), aad)


# ---- ML-KEM-768: key generation (NIST ACVP) ---------------------------------------
ACVP_KEYGEN = _load("acvp_mlkem768_keygen.json")["tests"]


@pytest.mark.parametrize("vector", ACVP_KEYGEN, ids=_ids(ACVP_KEYGEN, "tcId"))
def test_mlkem768_keygen_acvp(vector: dict[str, Any]) -> None:
    # FIPS 203 ML-KEM.KeyGen_internal(d, z); our 64-byte seed is d || z.
    ek = KemPrivateKey(_h(vector["d"]) + _h(vector["z"])).public_key().to_bytes()
    assert ek[:32].hex().upper() == vector["ek_first_32"]
    assert ek[-32:].hex().upper() == vector["ek_last_32"]
    assert hashlib.sha3_256(ek).hexdigest().upper() == vector["ek_sha3_256"]


# ---- ML-KEM-768: key generation and decapsulation (Wycheproof) ---------------------
WYCHEPROOF = _load("wycheproof_mlkem768.json")
WYCHEPROOF_VALID = [t for t in WYCHEPROOF["decaps_tests"] if t["result"] == "valid"]
WYCHEPROOF_INVALID = [t for t in WYCHEPROOF["decaps_tests"] if t["result"] == "invalid"]


@pytest.mark.parametrize(
    "vector", WYCHEPROOF["keygen_tests"], ids=_ids(WYCHEPROOF["keygen_tests"], "tcId")
)
def test_mlkem768_keygen_from_seed_wycheproof(vector: dict[str, Any]) -> None:
    assert KemPrivateKey(_h(vector["seed"])).public_key().to_bytes().hex() == vector["ek"]


@pytest.mark.parametrize("vector", WYCHEPROOF_VALID, ids=_ids(WYCHEPROOF_VALID, "tcId"))
def test_mlkem768_decapsulation_wycheproof(vector: dict[str, Any]) -> None:
    # Valid cases include modified and random ciphertexts: there the published K is
    # the implicit-rejection secret, which decapsulation must return (not an error).
    private_key = KemPrivateKey(_h(vector["seed"]))
    assert private_key.public_key().to_bytes().hex() == vector["ek"]
    assert private_key.decapsulate(_h(vector["c"])).hex() == vector["K"]


@pytest.mark.parametrize("vector", WYCHEPROOF_INVALID, ids=_ids(WYCHEPROOF_INVALID, "tcId"))
def test_mlkem768_malformed_inputs_are_refused_wycheproof(vector: dict[str, Any]) -> None:
    with pytest.raises(InvalidKey):
        KemPrivateKey(_h(vector["seed"])).decapsulate(_h(vector["c"]))


def test_mlkem768_wycheproof_selection_covers_each_kind() -> None:
    comments = {t["comment"].split(" ")[0] for t in WYCHEPROOF["decaps_tests"]}
    assert {"Private", "Ciphertext", "Random", "Bit", "Rho", "Test"} <= comments
    assert any("Strcmp" in t["flags"] for t in WYCHEPROOF["decaps_tests"])


# ---- HPKE: the KEM of our suite against draft-ietf-hpke-pq --------------------------
HPKE = _load("hpke_pq_mlkem768_x25519.json")
OUR_AEAD_ID = 0x0002  # AES-256-GCM, as app/crypto/_hpke.py's suite


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    mac = crypto_hmac.HMAC(salt or bytes(32), hashes.SHA256())
    mac.update(b"HPKE-v1" + suite_id + label + ikm)
    return mac.finalize()


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled_info = length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled_info).derive(prk)


def _base_mode_key_schedule(shared_secret: bytes, info: bytes, aead_id: int) -> tuple[bytes, bytes]:
    """RFC 9180 section 5.1, mode_base, KDF HKDF-SHA256, for a 32-byte AEAD key."""
    suite_id = b"HPKE" + HPKE["kem_id"].to_bytes(2, "big") + (1).to_bytes(2, "big")
    suite_id += aead_id.to_bytes(2, "big")
    psk_id_hash = _labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite_id, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(suite_id, shared_secret, b"secret", b"")
    key = _labeled_expand(suite_id, secret, b"key", context, 32)
    return key, _labeled_expand(suite_id, secret, b"base_nonce", context, 12)


def _hpke_private_key_from_published_seed() -> HpkePrivateKey:
    # The 32-byte MLKEM768-X25519 decapsulation key expands with SHAKE256 to 96 bytes:
    # the ML-KEM-768 seed d || z, then the X25519 private key - our serialisation.
    return HpkePrivateKey(hashlib.shake_256(_h(HPKE["skRm"])).digest(96))


def test_hpke_kem_key_pair_matches_the_published_one() -> None:
    assert HPKE["kem_id"] == 0x647A and HPKE["kdf_id"] == 0x0001 and HPKE["mode"] == 0
    public = _hpke_private_key_from_published_seed().public_key()
    assert public.to_bytes().hex() == HPKE["pkRm"]


def test_the_tests_hpke_key_schedule_reproduces_the_published_one() -> None:
    # Validates the helper above on the published suite (ChaCha20-Poly1305, id 3).
    key, base_nonce = _base_mode_key_schedule(
        _h(HPKE["shared_secret"]), _h(HPKE["info"]), HPKE["aead_id"]
    )
    assert (key.hex(), base_nonce.hex()) == (HPKE["key"], HPKE["base_nonce"])
    encryption = HPKE["encryption_0"]
    assert encryption["nonce"] == HPKE["base_nonce"]
    plaintext = ChaCha20Poly1305(key).decrypt(
        base_nonce, _h(encryption["ct"]), _h(encryption["aad"])
    )
    assert plaintext.hex() == encryption["pt"]


def test_hpke_open_decapsulates_the_published_encapsulation() -> None:
    # Our suite uses AES-256-GCM, for which no vector is published: seal with the
    # published shared secret under RFC 9180's schedule for aead_id 2, and our
    # hpke_open must recover it from the published enc and private key alone.
    info = _h(HPKE["info"])
    key, base_nonce = _base_mode_key_schedule(_h(HPKE["shared_secret"]), info, OUR_AEAD_ID)
    ciphertext = AESGCM(key).encrypt(base_nonce, b"sealed to the published key", None)
    recipient = _hpke_private_key_from_published_seed()
    sealed = _h(HPKE["enc"]) + ciphertext
    assert hpke_open(recipient, sealed, info) == b"sealed to the published key"
    with pytest.raises(DecryptionError):
        hpke_open(recipient, sealed, info + b"!")
