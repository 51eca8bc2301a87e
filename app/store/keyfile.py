"""The key file: the store's random database key, wrapped, and nothing else.

`store.key` is JSON (version 1) holding the wrapping method, the KDF parameters
and salt when a passphrase is used, a nonce and the AES-256-GCM-wrapped 32-byte
database key. The header fields are the AEAD's associated data, so an edited
parameter or method makes unwrapping fail instead of silently weakening it. The
AEAD is checked only after Argon2id ran, so the costs are bounded on read: below
`Argon2Params.minimum()` or above the ceilings here, the file is refused before
any derivation (an edited file could otherwise ask for terabytes of memory).
The file is replaced atomically (temporary file, fsync, rename, directory fsync),
so a crash while changing the passphrase leaves either the old or the new file.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Protocol

from app.crypto import (
    RFC9106_SECOND_RECOMMENDED,
    AeadKey,
    Argon2Params,
    DecryptionError,
    Rng,
    SystemRng,
    aead_open,
    aead_seal,
    argon2id,
)
from app.store.errors import StoreCorrupt, StoreLocked, WrongPassphrase

KEY_FILE_NAME = "store.key"
KEY_FILE_VERSION = 1
DB_KEY_LENGTH = 32
KEYRING_SERVICE = "cipherline"

# Ceilings on the Argon2id costs a key file may ask for, just above anything
# Cipherline writes: the default is RFC 9106's second recommended option (t=3,
# 64 MiB, p=4); its first option (t=1, 2 GiB, p=4) is the most memory we would
# ever choose. Salts are what `Argon2Params.salt_length` writes (16) up to 64.
MAX_KDF_TIME_COST = Argon2Params.maximum().time_cost
MAX_KDF_MEMORY_KIB = Argon2Params.maximum().memory_cost_kib  # 2 GiB
MAX_KDF_PARALLELISM = Argon2Params.maximum().parallelism
MIN_SALT_LENGTH = 16
MAX_SALT_LENGTH = Argon2Params.maximum().salt_length


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise StoreCorrupt("the key file is damaged (a field is not text)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise StoreCorrupt("the key file is damaged (bad base64)") from None


def kdf_problem(kdf: Argon2Params, salt_length: int) -> str | None:
    """Why these Argon2id costs and salt length are refused, or None when they are not."""
    if not kdf.is_at_least(Argon2Params.minimum()):
        return "its KDF costs are below the safe minimum"
    if kdf.memory_cost_kib > MAX_KDF_MEMORY_KIB:
        return (
            f"its KDF asks for {kdf.memory_cost_kib} KiB of memory, more than the"
            f" {MAX_KDF_MEMORY_KIB} KiB (2 GiB) Cipherline ever uses"
        )
    if kdf.time_cost > MAX_KDF_TIME_COST:
        return (
            f"its KDF asks for {kdf.time_cost} passes, more than the {MAX_KDF_TIME_COST}"
            " Cipherline ever uses"
        )
    if kdf.parallelism > MAX_KDF_PARALLELISM:
        return (
            f"its KDF asks for {kdf.parallelism} lanes, more than the {MAX_KDF_PARALLELISM}"
            " Cipherline ever uses"
        )
    if not MIN_SALT_LENGTH <= salt_length <= MAX_SALT_LENGTH:
        return (
            f"its KDF salt is {salt_length} bytes, not the {MIN_SALT_LENGTH} to"
            f" {MAX_SALT_LENGTH} Cipherline uses"
        )
    return None


def _refuse(problem: str) -> StoreCorrupt:
    return StoreCorrupt(
        f"the key file was edited or is damaged: {problem}; nothing was derived or changed"
    )


@dataclass(frozen=True)
class KeyFile:
    method: str  # "passphrase" | "keyring"
    nonce: bytes
    wrapped_key: bytes
    salt: bytes = b""
    kdf: Argon2Params | None = None
    keyring_account: str = ""

    def __repr__(self) -> str:
        # The wrapped key and salt are what an offline passphrase guess needs.
        return f"KeyFile({self.method!r}, kdf={self.kdf!r}, <wrapped key hidden>)"

    def header(self) -> dict[str, object]:
        header: dict[str, object] = {"version": KEY_FILE_VERSION, "method": self.method}
        if self.kdf is not None:
            header["kdf"] = {
                "name": "argon2id",
                "time_cost": self.kdf.time_cost,
                "memory_cost_kib": self.kdf.memory_cost_kib,
                "parallelism": self.kdf.parallelism,
                "salt": _b64(self.salt),
            }
        if self.keyring_account:
            header["keyring_account"] = self.keyring_account
        return header

    def associated_data(self) -> bytes:
        return json.dumps(self.header(), sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        body = self.header() | {"nonce": _b64(self.nonce), "wrapped_key": _b64(self.wrapped_key)}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> KeyFile:
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StoreCorrupt("the key file is damaged (not JSON)") from None
        if not isinstance(raw, dict):
            raise StoreCorrupt("the key file is damaged (not an object)")
        if raw.get("version") != KEY_FILE_VERSION:
            raise StoreCorrupt(f"key file version {raw.get('version')!r} is not supported")
        method = raw.get("method")
        if method not in ("passphrase", "keyring"):
            raise StoreCorrupt("the key file names an unknown protection method")
        kdf: Argon2Params | None = None
        salt = b""
        if method == "passphrase":
            spec = raw.get("kdf")
            if not isinstance(spec, dict) or spec.get("name") != "argon2id":
                raise StoreCorrupt("the key file's KDF is missing or unknown")
            costs: list[int] = []
            for name in ("time_cost", "memory_cost_kib", "parallelism"):
                cost = spec.get(name)
                # Whole numbers only: JSON also allows 1.5, 6e385 (infinity) and true.
                if type(cost) is not int or not 0 < cost < 2**32:
                    raise StoreCorrupt("the key file's KDF parameters are damaged")
                costs.append(cost)
            kdf = Argon2Params(time_cost=costs[0], memory_cost_kib=costs[1], parallelism=costs[2])
            salt = _unb64(spec.get("salt"))
            # Refused here, before anything can run Argon2id with these costs.
            problem = kdf_problem(kdf, len(salt))
            if problem is not None:
                raise _refuse(problem)
        account = raw.get("keyring_account", "")
        if not isinstance(account, str):
            raise StoreCorrupt("the key file's keyring account is damaged")
        return KeyFile(
            method=method,
            nonce=_unb64(raw.get("nonce")),
            wrapped_key=_unb64(raw.get("wrapped_key")),
            salt=salt,
            kdf=kdf,
            keyring_account=account,
        )


class Protector(Protocol):
    """Wraps and unwraps the database key."""

    def wrap(self, db_key: bytes, rng: Rng) -> KeyFile: ...

    def unwrap(self, key_file: KeyFile) -> bytes: ...


def _seal(key: bytes, key_file: KeyFile, db_key: bytes) -> KeyFile:
    sealed = aead_seal(AeadKey(key), key_file.nonce, db_key, key_file.associated_data())
    return KeyFile(
        method=key_file.method,
        nonce=key_file.nonce,
        wrapped_key=sealed,
        salt=key_file.salt,
        kdf=key_file.kdf,
        keyring_account=key_file.keyring_account,
    )


def _open(key: bytes, key_file: KeyFile) -> bytes:
    db_key = aead_open(
        AeadKey(key), key_file.nonce, key_file.wrapped_key, key_file.associated_data()
    )
    if len(db_key) != DB_KEY_LENGTH:
        raise StoreCorrupt("the key file holds a key of the wrong length")
    return db_key


class PassphraseProtector:
    """Argon2id (RFC 9106, second recommended option) over a passphrase the user chose."""

    def __init__(self, passphrase: str, params: Argon2Params = RFC9106_SECOND_RECOMMENDED) -> None:
        # Never write a key file this module would refuse to read.
        problem = kdf_problem(params, params.salt_length)
        if problem is not None:
            raise ValueError(f"these Argon2id parameters are refused: {problem}")
        self._passphrase = passphrase.encode("utf-8")
        self._params = params

    def __repr__(self) -> str:
        return "PassphraseProtector(<hidden>)"

    def wrap(self, db_key: bytes, rng: Rng) -> KeyFile:
        salt = rng.random_bytes(self._params.salt_length)
        template = KeyFile(
            method="passphrase",
            nonce=rng.random_bytes(12),
            wrapped_key=b"",
            salt=salt,
            kdf=self._params,
        )
        return _seal(argon2id(self._passphrase, salt, self._params), template, db_key)

    def unwrap(self, key_file: KeyFile) -> bytes:
        if key_file.method != "passphrase" or key_file.kdf is None:
            raise StoreLocked("this profile is not protected by a passphrase")
        problem = kdf_problem(key_file.kdf, len(key_file.salt))
        if problem is not None:
            raise _refuse(problem)
        wrapping = argon2id(self._passphrase, key_file.salt, key_file.kdf)
        try:
            return _open(wrapping, key_file)
        except DecryptionError:
            raise WrongPassphrase from None


def keyring_usable() -> bool:
    """True when a real keyring backend (not the fail or null one) is configured."""
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 - any import or backend failure means "no keyring"
        return False
    name = type(backend).__module__ + "." + type(backend).__name__
    return not isinstance(backend, fail.Keyring) and "null" not in name.lower()


class KeyringProtector:
    """A random wrapping key kept by the OS keyring; the key file holds only its wrap."""

    def __init__(self, account: str, service: str = KEYRING_SERVICE) -> None:
        self._account = account
        self._service = service

    def wrap(self, db_key: bytes, rng: Rng) -> KeyFile:
        import keyring

        wrapping = rng.random_bytes(32)
        keyring.set_password(self._service, self._account, wrapping.hex())
        template = KeyFile(
            method="keyring",
            nonce=rng.random_bytes(12),
            wrapped_key=b"",
            keyring_account=self._account,
        )
        return _seal(wrapping, template, db_key)

    def unwrap(self, key_file: KeyFile) -> bytes:
        import keyring

        if key_file.method != "keyring":
            raise StoreLocked("this profile is protected by a passphrase")
        stored = keyring.get_password(self._service, key_file.keyring_account or self._account)
        if stored is None:
            raise StoreLocked("the system keyring no longer holds this profile's key")
        try:
            return _open(bytes.fromhex(stored), key_file)
        except (DecryptionError, ValueError):
            raise StoreLocked("the key in the system keyring does not open this profile") from None


def new_db_key(rng: Rng | None = None) -> bytes:
    return (rng or SystemRng()).random_bytes(DB_KEY_LENGTH)
