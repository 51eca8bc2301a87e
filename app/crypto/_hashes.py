"""Hashes, MACs and KDFs."""

from __future__ import annotations

import hashlib as _stdlib_hashlib
import hmac as _stdlib_hmac
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def sha512(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA512())
    digest.update(data)
    return digest.finalize()


class Sha256:
    """Incremental SHA-256 for streams (attachments, backups)."""

    def __init__(self) -> None:
        self._hash = hashes.Hash(hashes.SHA256())

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.copy().finalize()


def blake2b_keyed(key: bytes, data: bytes, length: int, person: bytes) -> bytes:
    """Keyed BLAKE2b (RFC 7693), a PRF in one pass where HMAC takes two: what
    libsodium's crypto_kdf derives subkeys with. `person` (up to 16 bytes) keeps
    one use's outputs apart from another's."""
    if not 1 <= length <= 64 or not 16 <= len(key) <= 64 or len(person) > 16:
        raise ValueError("BLAKE2b takes a 16-64 byte key, 1-64 output bytes, person <= 16")
    return _stdlib_hashlib.blake2b(data, digest_size=length, key=key, person=person).digest()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return _stdlib_hmac.compare_digest(a, b)


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF (RFC 5869) with SHA-256. `salt=None` means a string of zeros, per the RFC."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def hkdf_sha512(ikm: bytes, *, salt: bytes | None, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA512(), length=length, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True)
class Argon2Params:
    """Argon2id cost parameters, stored beside whatever they protect.

    The default is RFC 9106 section 4's second recommended option (t=3, 64 MiB,
    p=4), the one meant for machines that cannot spend 2 GiB per derivation.
    """

    time_cost: int = 3
    memory_cost_kib: int = 64 * 1024
    parallelism: int = 4
    salt_length: int = 16

    # A floor below which stored parameters are refused: an attacker who can edit
    # the key file must not be able to make us derive with trivial costs.
    @staticmethod
    def minimum() -> Argon2Params:
        return Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)

    def is_at_least(self, floor: Argon2Params) -> bool:
        return (
            self.time_cost >= floor.time_cost
            and self.memory_cost_kib >= floor.memory_cost_kib
            and self.parallelism >= floor.parallelism
        )

    # A ceiling above which stored parameters are refused before anything is
    # derived: an edited file must not make us spend terabytes or hours. It is just
    # above the most we ever write (RFC 9106's first recommendation uses 2 GiB).
    @staticmethod
    def maximum() -> Argon2Params:
        return Argon2Params(
            time_cost=20, memory_cost_kib=2 * 1024 * 1024, parallelism=16, salt_length=64
        )

    def is_at_most(self, ceiling: Argon2Params) -> bool:
        return (
            self.time_cost <= ceiling.time_cost
            and self.memory_cost_kib <= ceiling.memory_cost_kib
            and self.parallelism <= ceiling.parallelism
        )


RFC9106_SECOND_RECOMMENDED = Argon2Params()


def argon2id(password: bytes, salt: bytes, params: Argon2Params, length: int = 32) -> bytes:
    return hash_secret_raw(
        secret=password,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_cost_kib,
        parallelism=params.parallelism,
        hash_len=length,
        type=Type.ID,
    )
