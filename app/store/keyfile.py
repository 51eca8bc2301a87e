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

`store.recovery` (docs/store-key.md) is a second wrapping of the same database
key, under the profile's backup key, so that losing the keyring entry (or the
passphrase) never loses the store: whoever holds the 64-digit backup key, or the
backup password that gets it from the vault, can open the store and wrap its key
again. It is written when backups are set up and removed when they are turned off.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

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
    constant_time_equal,
    hkdf_sha256,
)
from app.store.durability import fsync_directory, write_atomically
from app.store.errors import StoreCorrupt, StoreError, StoreLocked, WrongPassphrase

if TYPE_CHECKING:
    from app.store.database import Store

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


class _WrappedKeyJson(ABC):
    """What a key file and a recovery file share: a JSON header that is also the
    AEAD's associated data (canonical form), and the nonce and wrapped key after it."""

    nonce: bytes
    wrapped_key: bytes

    @abstractmethod
    def header(self) -> dict[str, object]:
        """Each file's own header fields."""

    def associated_data(self) -> bytes:
        return json.dumps(self.header(), sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        body = self.header() | {"nonce": _b64(self.nonce), "wrapped_key": _b64(self.wrapped_key)}
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


@dataclass(frozen=True)
class KeyFile(_WrappedKeyJson):
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


class KeyringKeyLost(StoreLocked):
    """The system keyring cannot give back this profile's wrapping key.

    `reason` is one of `MISSING` (the entry is gone: the keyring was reset or
    replaced), `UNREACHABLE` (no keyring answers in this session) or `MISMATCH`
    (an entry is there but does not open this profile). The store itself is
    untouched in every case; `store.recovery` may open it (`RecoveryFile`).
    """

    MISSING = "missing"
    UNREACHABLE = "unreachable"
    MISMATCH = "mismatch"

    def __init__(self, reason: str, detail: str = "") -> None:
        messages = {
            self.MISSING: "the system keyring no longer holds this profile's key",
            self.UNREACHABLE: "the system keyring cannot be reached",
            self.MISMATCH: "the key in the system keyring does not open this profile",
        }
        text = messages[reason]
        super().__init__(f"{text} ({detail})" if detail else text)
        self.reason = reason


def keyring_problem() -> str | None:
    """Why the system keyring cannot protect a profile here, as a sentence for the
    first-run screen; None when a real backend (not the fail or null one) is
    configured."""
    try:
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
    except OSError:
        # keyring probes the session bus while choosing a backend, and a bus that
        # is named but gone (a stale address) fails that probe with an OSError.
        return "the D-Bus session bus that this session names cannot be reached"
    except Exception as error:  # noqa: BLE001 - any import or backend failure means "no keyring"
        return f"the keyring library could not start ({type(error).__name__})"
    name = type(backend).__module__ + "." + type(backend).__name__
    if "null" in name.lower():
        return "the system keyring is switched off for Cipherline (the null keyring is configured)"
    if not isinstance(backend, fail.Keyring):
        return None
    # A plain value, so the other platforms' answer stays checked on Linux too.
    desktop_bus = sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd"))
    if desktop_bus:
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            return (
                "this session has no D-Bus session bus, so no system keyring (GNOME Keyring,"
                " KWallet or KeePassXC) can be reached"
            )
        return (
            "no system keyring (GNOME Keyring, KWallet or KeePassXC) is running in this"
            " desktop session"
        )
    return "no system keyring is available on this computer"


def keyring_usable() -> bool:
    """True when a real keyring backend (not the fail or null one) is configured."""
    return keyring_problem() is None


class KeyringProtector:
    """A random wrapping key kept by the OS keyring; the key file holds only its wrap."""

    def __init__(self, account: str, service: str = KEYRING_SERVICE) -> None:
        self._account = account
        self._service = service

    def wrap(self, db_key: bytes, rng: Rng) -> KeyFile:
        import keyring

        wrapping = rng.random_bytes(32)
        try:
            keyring.set_password(self._service, self._account, wrapping.hex())
        except Exception as error:  # noqa: BLE001 - every backend raises its own kind
            # Only the error's type: a backend's message may quote what it was given.
            raise StoreLocked(
                f"the system keyring did not take Cipherline's key ({type(error).__name__})"
            ) from None
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
        try:
            stored = keyring.get_password(self._service, key_file.keyring_account or self._account)
        except Exception as error:  # noqa: BLE001 - no backend, a dead bus, a locked collection
            raise KeyringKeyLost(KeyringKeyLost.UNREACHABLE, type(error).__name__) from None
        if stored is None:
            raise KeyringKeyLost(KeyringKeyLost.MISSING)
        try:
            return _open(bytes.fromhex(stored), key_file)
        except (DecryptionError, ValueError):
            raise KeyringKeyLost(KeyringKeyLost.MISMATCH) from None


# ---- the recovery wrapping (docs/store-key.md) -----------------------------------------

RECOVERY_FILE_NAME = "store.recovery"
RECOVERY_FORMAT = "cipherline-store-key-recovery"
RECOVERY_VERSION = 1
RECOVERY_METHOD_KEY = "key"
RECOVERY_METHOD_PASSWORD = "password"  # noqa: S105 - a method name, not a password
RECOVERY_SALT_LENGTH = 32
RECOVERY_COMMITMENT_LENGTH = 32
RECOVERY_RECORD_ID_LENGTH = 16
BACKUP_KEY_LENGTH = 32
# Labels of their own, so no other Cipherline key is ever derived the same way,
# even from the same backup key (the backup file uses "Cipherline backup v1 …").
RECOVERY_WRAP_INFO = b"Cipherline store-key recovery v1 wrap key"
RECOVERY_COMMITMENT_INFO = b"Cipherline store-key recovery v1 key commitment"


class WrongRecoveryKey(StoreError):
    """A well-formed backup key whose commitment does not match `store.recovery`."""

    def __init__(self) -> None:
        super().__init__("that backup key does not open this profile; nothing was changed")


class RecoveryDamaged(StoreCorrupt):
    """`store.recovery` was edited, cut short or not written by Cipherline."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the store's recovery file is damaged ({detail})")


def _recovery_bytes(raw: dict[str, object], name: str, length: int) -> bytes:
    text = raw.get(name)
    if not isinstance(text, str):
        raise RecoveryDamaged(f"{name} is missing")
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RecoveryDamaged(f"{name} is not base64") from None
    if len(value) != length:
        raise RecoveryDamaged(f"{name} is {len(value)} bytes, not {length}")
    return value


@dataclass(frozen=True)
class RecoveryFile(_WrappedKeyJson):
    """The database key sealed under a key derived from the backup key.

    `method` says how the user holds the backup key: as 64 digits ("key") or
    through the vault with the backup password ("password"), whose record this
    names. Everything but the nonce and the sealed key is associated data.
    """

    method: str
    salt: bytes
    commitment: bytes
    nonce: bytes
    wrapped_key: bytes
    vault_record_id: bytes = b""

    def __repr__(self) -> str:
        return f"RecoveryFile({self.method!r}, <wrapped key hidden>)"

    @staticmethod
    def derive(backup_key: bytes, salt: bytes) -> tuple[bytes, bytes]:
        """(wrap key, commitment) for this backup key and salt."""
        if len(backup_key) != BACKUP_KEY_LENGTH:
            raise ValueError("a backup key is 32 bytes")
        wrap = hkdf_sha256(backup_key, salt=salt, info=RECOVERY_WRAP_INFO, length=32)
        commitment = hkdf_sha256(
            backup_key, salt=salt, info=RECOVERY_COMMITMENT_INFO, length=RECOVERY_COMMITMENT_LENGTH
        )
        return wrap, commitment

    @classmethod
    def seal(
        cls,
        db_key: bytes,
        backup_key: bytes,
        *,
        method: str,
        vault_record_id: bytes = b"",
        rng: Rng | None = None,
    ) -> RecoveryFile:
        if method not in (RECOVERY_METHOD_KEY, RECOVERY_METHOD_PASSWORD):
            raise ValueError(f"unknown recovery method {method!r}")
        if (method == RECOVERY_METHOD_PASSWORD) != bool(vault_record_id):
            raise ValueError("a vault record id goes with the password method, and only with it")
        if len(db_key) != DB_KEY_LENGTH:
            raise ValueError("a database key is 32 bytes")
        rng = rng or SystemRng()
        salt = rng.random_bytes(RECOVERY_SALT_LENGTH)
        wrap, commitment = cls.derive(backup_key, salt)
        template = cls(method, salt, commitment, rng.random_bytes(12), b"", vault_record_id)
        sealed = aead_seal(AeadKey(wrap), template.nonce, db_key, template.associated_data())
        return cls(method, salt, commitment, template.nonce, sealed, vault_record_id)

    def header(self) -> dict[str, object]:
        header: dict[str, object] = {
            "format": RECOVERY_FORMAT,
            "version": RECOVERY_VERSION,
            "method": self.method,
            "salt": _b64(self.salt),
            "commitment": _b64(self.commitment),
        }
        if self.vault_record_id:
            header["vault_record_id"] = self.vault_record_id.hex()
        return header

    @staticmethod
    def from_json(text: str) -> RecoveryFile:
        try:
            raw = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RecoveryDamaged("not JSON") from None
        if not isinstance(raw, dict) or raw.get("format") != RECOVERY_FORMAT:
            raise RecoveryDamaged("not a Cipherline store recovery file")
        version = raw.get("version")
        if type(version) is not int:
            raise RecoveryDamaged("no version")
        if version != RECOVERY_VERSION:
            raise StoreCorrupt(
                f"the store's recovery file is version {version}, which this Cipherline"
                " does not read; update Cipherline"
            )
        known = {"format", "version", "method", "salt", "commitment", "vault_record_id"}
        unknown = set(raw) - known - {"nonce", "wrapped_key"}
        if unknown:
            raise RecoveryDamaged("it has fields this version does not write")
        method = raw.get("method")
        if method not in (RECOVERY_METHOD_KEY, RECOVERY_METHOD_PASSWORD):
            raise RecoveryDamaged("unknown method")
        record_id = b""
        if method == RECOVERY_METHOD_PASSWORD:
            record_text = raw.get("vault_record_id")
            try:
                record_id = bytes.fromhex(record_text) if isinstance(record_text, str) else b""
            except ValueError:
                record_id = b""
            if len(record_id) != RECOVERY_RECORD_ID_LENGTH:
                raise RecoveryDamaged("the vault record id is missing or malformed")
        elif "vault_record_id" in raw:
            raise RecoveryDamaged("a vault record id with the key method")
        return RecoveryFile(
            method=method,
            salt=_recovery_bytes(raw, "salt", RECOVERY_SALT_LENGTH),
            commitment=_recovery_bytes(raw, "commitment", RECOVERY_COMMITMENT_LENGTH),
            nonce=_recovery_bytes(raw, "nonce", 12),
            wrapped_key=_recovery_bytes(raw, "wrapped_key", DB_KEY_LENGTH + 16),
            vault_record_id=record_id,
        )

    def matches(self, backup_key: bytes) -> bool:
        """Whether this backup key is the one the file was sealed under (before any
        decryption: a commitment is a PRF output and says nothing else about the key)."""
        return constant_time_equal(self.derive(backup_key, self.salt)[1], self.commitment)

    def open(self, backup_key: bytes) -> bytes:
        """The database key. A different backup key raises `WrongRecoveryKey`; a
        file edited after it was sealed raises `RecoveryDamaged`."""
        wrap, commitment = self.derive(backup_key, self.salt)
        if not constant_time_equal(commitment, self.commitment):
            raise WrongRecoveryKey
        try:
            db_key = aead_open(AeadKey(wrap), self.nonce, self.wrapped_key, self.associated_data())
        except DecryptionError:
            raise RecoveryDamaged("it failed authentication") from None
        if len(db_key) != DB_KEY_LENGTH:
            raise RecoveryDamaged("it holds a key of the wrong length")
        return db_key


def read_recovery(profile: Path) -> RecoveryFile | None:
    """This profile's recovery wrapping, or None when it has none (backups were never
    set up, or were turned off)."""
    try:
        text = (profile / RECOVERY_FILE_NAME).read_text()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise RecoveryDamaged("not text") from None
    return RecoveryFile.from_json(text)


def write_recovery(
    store: Store,
    backup_key: bytes,
    *,
    method: str,
    vault_record_id: bytes = b"",
    rng: Rng | None = None,
) -> None:
    """Seals `store`'s database key under `backup_key` into its profile's
    `store.recovery`, replacing any earlier one atomically."""
    # The key the store was opened with; this module is the store's own key handling.
    recovery = RecoveryFile.seal(
        store._db_key, backup_key, method=method, vault_record_id=vault_record_id, rng=rng
    )
    write_atomically(store.path.parent / RECOVERY_FILE_NAME, recovery.to_json().encode())


def recovery_is_current(store: Store, backup_key: bytes) -> bool:
    """Whether `store.recovery` exists, is sealed under `backup_key` and holds this
    store's database key (it would not after a restore into a reused folder)."""
    try:
        recovery = read_recovery(store.path.parent)
        return recovery is not None and constant_time_equal(
            recovery.open(backup_key), store._db_key
        )
    except StoreError:
        return False


def remove_recovery(profile: Path) -> None:
    path = profile / RECOVERY_FILE_NAME
    if path.exists():
        path.unlink()
        fsync_directory(profile)


class RecoveredKey:
    """A database key already recovered through `store.recovery`, as a `Protector`
    for `Store.open` and `Store.change_protection`: it opens the store once so the
    key is proven before any key file is rewritten, and then hands the key over to
    the keyring or passphrase protector that wraps it from now on."""

    def __init__(self, db_key: bytes) -> None:
        if len(db_key) != DB_KEY_LENGTH:
            raise ValueError("a database key is 32 bytes")
        self._db_key = db_key

    def __repr__(self) -> str:
        return "RecoveredKey(<hidden>)"

    def wrap(self, db_key: bytes, rng: Rng) -> KeyFile:
        # Never a key file of its own: the recovered key is re-wrapped by the
        # keyring or a passphrase, and the recovery file stays as it is.
        raise StoreError("a recovered key is wrapped again by the keyring or a passphrase")

    def unwrap(self, key_file: KeyFile) -> bytes:
        return self._db_key


def new_db_key(rng: Rng | None = None) -> bytes:
    return (rng or SystemRng()).random_bytes(DB_KEY_LENGTH)
