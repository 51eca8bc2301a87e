"""Where a node's secrets live: SoftHSM2 (PKCS#11), a TPM, a keyholder process's
memory, or — for development only — software.

Every backend offers the same three things: `seal`/`unseal` for the node's secret
files (the fleet secrets and the node's own keys), and the node's signing key
(`sign`, `signing_public_key`). Records are encrypted under the fleet data key,
which exists on disk only sealed by the backend.

- softhsm: an AES-256 key and an HMAC key generated inside the token,
  non-extractable; sealing is AES-CBC-PAD then HMAC-SHA256, both computed by the
  token. The Ed25519 signing key is generated inside the token too.
- tpm: a 32-byte wrapping key sealed to the TPM's storage hierarchy with
  tpm2-tools (passed through stdin and stdout, never a file); sealing is
  AES-256-GCM under it; the signing key is kept sealed the same way. The sealed
  objects need an auth value derived from the node's PIN, and what they hold is
  masked with another PIN-derived key, so the TPM alone does not give them up.
  The TPM also keeps the node's monotonic counter (a rollback witness).
- memory: the keys live only in a keyholder process's memory
  (`vault_emulator/keyholder.py`), asked over a UNIX socket; nothing on disk opens
  the sealed files, and nothing will once that process has exited.
- soft: the wrapping key in a file. Refused without --insecure-dev.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from app.crypto import (
    RFC9106_SECOND_RECOMMENDED,
    Argon2Params,
    CryptoError,
    DecryptionError,
    SigningKey,
    aead_open,
    aead_seal,
    argon2id,
    constant_time_equal,
    hkdf_sha256,
    random_bytes,
)
from vault_emulator.keyholder import (
    KeyholderClient,
    KeyholderError,
    KeyholderRefused,
    KeyholderUnreachable,
)


class BackendError(Exception):
    """The backend is missing, locked or refused an operation."""


DOMAIN_LOST_MESSAGE = (
    "this vault domain's keys lived only in its keyholder's memory, and that process "
    "has restarted: the domain's records can never be opened again; provision a new "
    "domain (the split vault re-shares to it)"
)


class KeyholderRestarted(BackendError):
    """A `memory` node's keyholder is not the one it was provisioned with: its keys,
    and with them everything the node sealed, are gone for good."""

    def __init__(self) -> None:
        super().__init__(DOMAIN_LOST_MESSAGE)


class MonotonicCounter(Protocol):
    """A counter that only goes up, kept where a restored copy of the node's disk
    cannot take it back."""

    def read(self) -> int: ...

    def increment(self) -> int:
        """Add one and return the new value."""
        ...


class Backend(Protocol):
    name: str

    def seal(self, data: bytes) -> bytes: ...

    def unseal(self, blob: bytes) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...

    def signing_public_key(self) -> bytes: ...

    def monotonic_counter(self) -> MonotonicCounter | None:
        """The rollback witness, or None when the backend has no trusted monotonic state."""
        ...

    def close(self) -> None: ...


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class _AeadSealing:
    _wrapping: bytes

    def seal(self, data: bytes) -> bytes:
        nonce = random_bytes(12)
        return nonce + aead_seal(self._wrapping, nonce, data, b"cipherline vault seal")

    def unseal(self, blob: bytes) -> bytes:
        try:
            return aead_open(self._wrapping, blob[:12], blob[12:], b"cipherline vault seal")
        except DecryptionError:
            raise BackendError("a sealed vault file failed authentication") from None


class SoftBackend(_AeadSealing):
    """Development only: keys in files. Labelled insecure everywhere it shows."""

    name = "soft"

    def __init__(self, data_dir: Path, *, create: bool) -> None:
        key_path = data_dir / "soft-wrapping.key"
        signing_path = data_dir / "soft-signing.key"
        if create:
            _write_private(key_path, random_bytes(32))
            _write_private(signing_path, SigningKey.generate().to_bytes())
        try:
            self._wrapping = key_path.read_bytes()
            self._signing = SigningKey(signing_path.read_bytes())
        except (OSError, CryptoError):
            raise BackendError("the soft backend's key files are missing or damaged") from None

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def signing_public_key(self) -> bytes:
        return self._signing.verify_key().to_bytes()

    def monotonic_counter(self) -> MonotonicCounter | None:
        """None: a counter in a file is rolled back along with the files it should witness."""
        return None

    def close(self) -> None:
        """Nothing to release: each request opens its own connection to the keyholder."""


class SoftHsmBackend:
    name = "softhsm"
    WRAP_LABEL = "cipherline-wrap"
    MAC_LABEL = "cipherline-mac"
    SIGN_LABEL = "cipherline-sign"

    def __init__(self, library: str, token_label: str, pin: str, *, create: bool) -> None:
        import pkcs11
        from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

        self._pkcs11 = pkcs11
        self._mech = Mechanism
        try:
            lib = pkcs11.lib(library)
            token = lib.get_token(token_label=token_label)
            self._session = token.open(rw=True, user_pin=pin)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as error:
            raise BackendError(
                f"cannot open the HSM token {token_label!r}: {type(error).__name__}"
            ) from None
        session = self._session
        private = {Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True, Attribute.TOKEN: True}
        if create:
            for label in (self.WRAP_LABEL, self.MAC_LABEL, self.SIGN_LABEL):
                if list(session.get_objects({Attribute.LABEL: label})):
                    raise BackendError(
                        f"the token already holds a {label!r} key; use a fresh token"
                    )
            session.generate_key(
                KeyType.AES, 256, label=self.WRAP_LABEL, store=True, template=private
            )
            session.generate_key(
                KeyType.GENERIC_SECRET,
                256,
                label=self.MAC_LABEL,
                store=True,
                template={**private, Attribute.SIGN: True, Attribute.VERIFY: True},
            )
            from pkcs11.util.ec import encode_named_curve_parameters

            parameters = session.create_domain_parameters(
                KeyType.EC_EDWARDS,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("1.3.101.112")},
                local=True,
            )
            parameters.generate_keypair(
                store=True,
                label=self.SIGN_LABEL,
                private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True},
            )
        try:
            self._wrap: Any = session.get_key(label=self.WRAP_LABEL, key_type=KeyType.AES)
            self._mac: Any = session.get_key(label=self.MAC_LABEL, key_type=KeyType.GENERIC_SECRET)
            self._sign: Any = session.get_key(
                label=self.SIGN_LABEL, object_class=ObjectClass.PRIVATE_KEY
            )
            public = session.get_key(label=self.SIGN_LABEL, object_class=ObjectClass.PUBLIC_KEY)
        except (pkcs11.NoSuchKey, pkcs11.MultipleObjectsReturned):
            raise BackendError("the token does not hold this node's keys; run init") from None
        point: Any = public[Attribute.EC_POINT]
        self._public = bytes(point)[-32:]

    def seal(self, data: bytes) -> bytes:
        iv = random_bytes(16)
        ciphertext = self._wrap.encrypt(data, mechanism=self._mech.AES_CBC_PAD, mechanism_param=iv)
        body = iv + bytes(ciphertext)
        return body + bytes(self._mac.sign(body, mechanism=self._mech.SHA256_HMAC))

    def unseal(self, blob: bytes) -> bytes:
        body, tag = blob[:-32], blob[-32:]
        expected = bytes(self._mac.sign(body, mechanism=self._mech.SHA256_HMAC))
        if len(blob) < 48 or not constant_time_equal(tag, expected):
            raise BackendError("a sealed vault file failed authentication")
        return bytes(
            self._wrap.decrypt(
                body[16:], mechanism=self._mech.AES_CBC_PAD, mechanism_param=body[:16]
            )
        )

    def sign(self, message: bytes) -> bytes:
        return bytes(self._sign.sign(message, mechanism=self._mech.EDDSA))

    def signing_public_key(self) -> bytes:
        return self._public

    def monotonic_counter(self) -> MonotonicCounter | None:
        """None: SoftHSM2 keeps its token as files, so whoever restores an old copy of
        the records can restore the matching token too; nothing in it only moves forward.
        """
        return None

    def close(self) -> None:
        self._session.close()


# The storage primary's template is spelled out (it equals tpm2-tools 5.4's `-G ecc`
# default) so that a tools upgrade cannot change it: the same template on the same
# owner seed gives the same key, which is how a node finds its parent again after a
# TPM reset without any saved context.
_PRIMARY_TEMPLATE = (
    "-C",
    "o",
    "-g",
    "sha256",
    "-G",
    "ecc256:aes128cfb",
    "-a",
    "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth",
)
# No noda: wrong auth values count towards the TPM's dictionary-attack lockout.
_SEALED_ATTRIBUTES = "fixedtpm|fixedparent|userwithauth"
_COUNTER_ATTRIBUTES = "nt=counter|ownerread|authread|authwrite"
# The TCG handle registry leaves 0x01000000-0x013FFFFF to the owner.
_OWNER_NV_FIRST = 0x01000000
_OWNER_NV_SPAN = 0x00400000
# Stands, in an argv, for the file the auth value is read from (see _run_tool).
_AUTH = "\0auth"
_STATE_FILE = "node.json"
_FORMAT = 2
_LEGACY_FILES = ("wrap.pub", "wrap.priv", "sign.pub", "sign.priv", "primary.ctx")
_RC_NV_DEFINED = 0x14C
_RC_LOCKOUT = 0x921
_RC_PATTERN = re.compile(r"\((0x[0-9a-fA-F]+)\)")


def _response_codes(stderr: bytes) -> set[int]:
    return {int(code, 16) for code in _RC_PATTERN.findall(stderr.decode(errors="replace"))}


def _is_auth_failure(code: int) -> bool:
    # Format-one codes carry the failing session's number in bits 8-11;
    # 0x0E is TPM_RC_AUTH_FAIL and 0x22 TPM_RC_BAD_AUTH.
    return bool(code & 0x80) and (code & 0x3F) in (0x0E, 0x22)


def _failure(tool: str, stderr: bytes) -> BackendError:
    codes = _response_codes(stderr)
    if _RC_LOCKOUT in codes:
        return BackendError(
            f"{tool}: the TPM is in dictionary-attack lockout (wrong PINs, or power lost "
            "without TPM2_Shutdown); it lets the node in again once its recovery time passes"
        )
    if any(_is_auth_failure(code) for code in codes):
        return BackendError(f"{tool}: the TPM refused this node's PIN (wrong --pin-file?)")
    return BackendError(f"{tool} failed: {stderr.decode(errors='replace')[-200:]}")


def _run_tool(
    env: dict[str, str], argv: list[str], *, stdin: bytes | None = None, auth: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run one tpm2-tools command; `_AUTH` in argv stands for the auth value.

    The auth value reaches the tool as `file:` naming an anonymous memory file handed
    down as a descriptor: never on a command line, in the environment or on disk. A
    pipe does not do (tpm2-tools seeks the file), and tpm2_create's stdin already
    carries the data to seal.
    """
    fds: tuple[int, ...] = ()
    if auth is not None:
        fd = os.memfd_create("cipherline-tpm-auth", os.MFD_CLOEXEC)
        fds = (fd,)
        try:
            os.write(fd, b"hex:" + auth.hex().encode())
        except OSError:
            os.close(fd)
            raise
        argv = [f"file:/dev/fd/{fd}" if arg == _AUTH else arg for arg in argv]
    try:
        return subprocess.run(
            argv,
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
            pass_fds=fds,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BackendError(f"{argv[0]} could not run: {type(error).__name__}") from None
    finally:
        for fd in fds:
            os.close(fd)


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=True))


def _pin_keys(pin: str, salt: bytes, params: Argon2Params) -> dict[str, bytes]:
    # The TPM checks an auth value only as long as nobody runs its state on a patched
    # emulator, and a copy of swtpm's state files is exactly that opportunity. So the
    # PIN also masks what the objects hold: the TPM's half alone is random bytes, and
    # Argon2id prices every guess at the PIN.
    root = argon2id(pin.encode(), salt, params)
    return {
        label: hkdf_sha256(
            root, salt=None, info=b"cipherline vault tpm " + label.encode(), length=32
        )
        for label in ("object auth", "counter auth", "mask wrap", "mask sign")
    }


class TpmCounter:
    """The node's rollback witness: an NV counter index, authorised by a PIN-derived value.

    The TPM only ever moves it up; even an index deleted and defined again starts at
    the highest value any counter on that TPM has had.
    """

    def __init__(self, env: dict[str, str], index: int, auth: bytes) -> None:
        self._env = env
        self.index = index
        self._auth = auth
        self._lock = threading.Lock()

    def _nv(self, *argv: str) -> bytes:
        # NV commands load no objects and open no sessions, so unlike the object
        # commands they need no flushcontext afterwards.
        result = _run_tool(self._env, [*argv, "-P", _AUTH, hex(self.index)], auth=self._auth)
        if result.returncode != 0:
            raise _failure(argv[0], result.stderr)
        return result.stdout

    def _read(self) -> int:
        value = self._nv("tpm2_nvread", "-s", "8")
        if len(value) != 8:
            raise BackendError("tpm2_nvread returned a counter of the wrong size")
        return int.from_bytes(value, "big")

    def read(self) -> int:
        with self._lock:
            return self._read()

    def increment(self) -> int:
        """Add one and return the value read right after (TPM2_NV_Increment returns none)."""
        with self._lock:
            self._nv("tpm2_nvincrement")
            return self._read()


class TpmBackend(_AeadSealing):
    """Secrets sealed to a TPM's storage hierarchy.

    The files in `tpm/` are not secret: sealed objects (useless without this TPM and
    the PIN), the Argon2id salt and the counter's NV index, in `node.json`.
    """

    name = "tpm"

    def __init__(self, data_dir: Path, tcti: str, pin: str | None, *, create: bool) -> None:
        if not pin:
            raise BackendError("the TPM backend needs the node's PIN (--pin-file)")
        self._dir = data_dir / "tpm"
        self._env = {**os.environ, "TPM2TOOLS_TCTI": tcti}
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        legacy = (self._dir / "wrap.pub").exists()
        if create:
            if (self._dir / _STATE_FILE).exists() or legacy:
                raise BackendError(
                    f"{self._dir} already holds a TPM node; use a fresh data directory"
                )
            self._provision(pin, random_bytes(32), SigningKey.generate().to_bytes())
        elif not (self._dir / _STATE_FILE).exists():
            if not legacy:
                raise BackendError(f"{self._dir} holds no TPM node; run init")
            self._migrate(pin)
        index, keys = self._load_state(pin)
        with self._primary() as scratch:
            self._wrapping = _xor(
                self._unseal_object(scratch, "wrap-v2", keys["object auth"]), keys["mask wrap"]
            )
            signing = _xor(
                self._unseal_object(scratch, "sign-v2", keys["object auth"]), keys["mask sign"]
            )
        try:
            self._signing = SigningKey(signing)
        except CryptoError:
            raise BackendError("the TPM-sealed signing key is damaged") from None
        self._counter = TpmCounter(self._env, index, keys["counter auth"])

    def _tpm(self, *argv: str, stdin: bytes | None = None, auth: bytes | None = None) -> bytes:
        result = _run_tool(self._env, list(argv), stdin=stdin, auth=auth)
        # Without a resource manager, loaded objects outlive the command; the TPM
        # has room for only a few, so flush them after every step.
        if argv[0] != "tpm2_flushcontext":
            self._tpm("tpm2_flushcontext", "-t")
            self._tpm("tpm2_flushcontext", "-s")
        if result.returncode != 0:
            raise _failure(argv[0], result.stderr)
        return result.stdout

    @contextlib.contextmanager
    def _primary(self) -> Iterator[Path]:
        """A private scratch dir holding the storage primary's context, made afresh.

        A saved context dies with a TPM reset; recreating the primary from its template
        does not. Only handles live in the scratch dir, no secrets.
        """
        with tempfile.TemporaryDirectory(prefix="cl-tpm-") as scratch:
            path = Path(scratch)
            self._tpm("tpm2_createprimary", *_PRIMARY_TEMPLATE, "-c", str(path / "primary.ctx"))
            yield path

    def _unseal_object(self, scratch: Path, stem: str, auth: bytes | None) -> bytes:
        context = str(scratch / f"{stem}.ctx")
        self._tpm(
            "tpm2_load",
            "-C",
            str(scratch / "primary.ctx"),
            "-u",
            str(self._dir / f"{stem}.pub"),
            "-r",
            str(self._dir / f"{stem}.priv"),
            "-c",
            context,
        )
        if auth is None:
            return self._tpm("tpm2_unseal", "-c", context)
        return self._tpm("tpm2_unseal", "-c", context, "-p", _AUTH, auth=auth)

    def _provision(self, pin: str, wrapping: bytes, signing: bytes) -> None:
        params = RFC9106_SECOND_RECOMMENDED
        salt = random_bytes(params.salt_length)
        keys = _pin_keys(pin, salt, params)
        # No policy on top of the auth value: a PolicyAuthValue or PolicyPassword
        # policy asks for that same value again, and a PCR policy binds to nothing a
        # copy of the TPM's state could not replay. The PIN is the factor; see above.
        with self._primary() as scratch:
            for stem, secret, mask in (
                ("wrap-v2", wrapping, keys["mask wrap"]),
                ("sign-v2", signing, keys["mask sign"]),
            ):
                self._tpm(
                    "tpm2_create",
                    "-C",
                    str(scratch / "primary.ctx"),
                    "-g",
                    "sha256",
                    "-a",
                    _SEALED_ATTRIBUTES,
                    "-i",
                    "-",
                    "-p",
                    _AUTH,
                    "-u",
                    str(self._dir / f"{stem}.pub"),
                    "-r",
                    str(self._dir / f"{stem}.priv"),
                    stdin=_xor(secret, mask),
                    auth=keys["object auth"],
                )
        index = self._define_counter(keys["counter auth"])
        state = {
            "format": _FORMAT,
            "counter_index": hex(index),
            "kdf": {
                "salt": salt.hex(),
                "time_cost": params.time_cost,
                "memory_cost_kib": params.memory_cost_kib,
                "parallelism": params.parallelism,
            },
        }
        # Written last: until it exists, the node is not provisioned.
        _write_private(self._dir / _STATE_FILE, json.dumps(state, indent=2).encode())

    def _define_counter(self, auth: bytes) -> int:
        for _ in range(8):
            index = _OWNER_NV_FIRST + int.from_bytes(random_bytes(4), "big") % _OWNER_NV_SPAN
            argv = ["tpm2_nvdefine", "-C", "o", "-s", "8", "-a", _COUNTER_ATTRIBUTES]
            result = _run_tool(self._env, [*argv, "-p", _AUTH, hex(index)], auth=auth)
            if result.returncode == 0:
                # A fresh counter cannot be read before its first increment.
                TpmCounter(self._env, index, auth).increment()
                return index
            if _RC_NV_DEFINED not in _response_codes(result.stderr):
                raise _failure("tpm2_nvdefine", result.stderr)
        raise BackendError("tpm2_nvdefine: found no free NV index in the owner range")

    def _migrate(self, pin: str) -> None:
        """Reseal a node provisioned before PINs, whose objects open with no auth value."""
        with self._primary() as scratch:
            wrapping = self._unseal_object(scratch, "wrap", None)
            signing = self._unseal_object(scratch, "sign", None)
        self._provision(pin, wrapping, signing)
        # The TPM cannot revoke the old objects, so their files must go: anyone holding
        # them and this TPM's state could unseal them without a PIN.
        for name in _LEGACY_FILES:
            (self._dir / name).unlink(missing_ok=True)

    def _load_state(self, pin: str) -> tuple[int, dict[str, bytes]]:
        path = self._dir / _STATE_FILE
        try:
            state = json.loads(path.read_text())
            kdf = state["kdf"]
            params = Argon2Params(
                time_cost=int(kdf["time_cost"]),
                memory_cost_kib=int(kdf["memory_cost_kib"]),
                parallelism=int(kdf["parallelism"]),
            )
            salt = bytes.fromhex(kdf["salt"])
            index = int(state["counter_index"], 16)
        except (OSError, ValueError, KeyError, TypeError):
            raise BackendError(f"{path} is missing or damaged") from None
        if state.get("format") != _FORMAT or not params.is_at_least(Argon2Params.minimum()):
            raise BackendError(f"{path} has an unknown format or too weak a key derivation")
        # Checked before deriving: an edited file must not make the node spend
        # terabytes of memory or hours on its PIN.
        if not params.is_at_most(Argon2Params.maximum()) or not (
            16 <= len(salt) <= Argon2Params.maximum().salt_length
        ):
            raise BackendError(f"{path} asks for key derivation costs beyond any we write")
        return index, _pin_keys(pin, salt, params)

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def signing_public_key(self) -> bytes:
        return self._signing.verify_key().to_bytes()

    def monotonic_counter(self) -> MonotonicCounter | None:
        return self._counter

    def close(self) -> None:
        pass


def _keyholder_failure(error: KeyholderError) -> BackendError:
    if isinstance(error, KeyholderUnreachable):
        return BackendError(
            f"{error}: a keyholder that has stopped took this domain's keys with it "
            "(a new one would hold new keys)"
        )
    return BackendError(f"the keyholder failed: {error}")


class MemoryBackend:
    """Keys held only by a keyholder process (vault_emulator/keyholder.py); no PIN.

    `expected_public_key` is the keyholder's signing key recorded at init. A
    keyholder that answers with another one was started afresh and holds other
    keys; telling that apart here lets the operator learn that the domain is lost,
    not merely that a file failed authentication.
    """

    name = "memory"

    def __init__(self, socket_path: Path, expected_public_key: bytes | None) -> None:
        self._client = KeyholderClient(socket_path)
        try:
            self._public = self._client.public_key()
        except KeyholderError as error:
            raise _keyholder_failure(error) from None
        if expected_public_key is not None and not constant_time_equal(
            self._public, expected_public_key
        ):
            raise KeyholderRestarted()

    def seal(self, data: bytes) -> bytes:
        try:
            return self._client.seal(data)
        except KeyholderError as error:
            raise _keyholder_failure(error) from None

    def unseal(self, blob: bytes) -> bytes:
        try:
            return self._client.unseal(blob)
        except KeyholderRefused:
            raise BackendError("a sealed vault file failed authentication") from None
        except KeyholderError as error:
            raise _keyholder_failure(error) from None

    def sign(self, message: bytes) -> bytes:
        try:
            return self._client.sign(message)
        except KeyholderError as error:
            raise _keyholder_failure(error) from None

    def signing_public_key(self) -> bytes:
        return self._public

    def monotonic_counter(self) -> MonotonicCounter | None:
        """None: the keyholder keeps nothing that outlives it, let alone a counter."""
        return None

    def close(self) -> None:
        """Nothing to release: each request opens its own connection to the keyholder."""


def open_backend(config: Any, data_dir: Path, pin: str | None, *, create: bool) -> Backend:
    if config.backend == "soft":
        return SoftBackend(data_dir, create=create)
    if config.backend == "softhsm":
        if pin is None:
            raise BackendError("the HSM PIN is needed")
        return SoftHsmBackend(config.pkcs11_library, config.token_label, pin, create=create)
    if config.backend == "tpm":
        if not config.tpm_tcti:
            raise BackendError("the TPM backend needs --tcti")
        return TpmBackend(data_dir, config.tpm_tcti, pin, create=create)
    if config.backend == "memory":
        if not config.keyholder_socket:
            raise BackendError("the memory backend needs --keyholder-socket")
        if create:
            return MemoryBackend(Path(config.keyholder_socket), None)
        try:
            expected = bytes.fromhex(config.keyholder_public_key or "")
        except ValueError:
            expected = b""
        if len(expected) != 32:
            raise BackendError("vault.json does not record this node's keyholder key; run init")
        return MemoryBackend(Path(config.keyholder_socket), expected)
    raise BackendError(f"unknown backend {config.backend!r}")
