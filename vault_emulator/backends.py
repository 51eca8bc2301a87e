"""Where a node's secrets live: SoftHSM2 (PKCS#11), a TPM, or — for development
only — software.

Every backend offers the same three things: `seal`/`unseal` for the node's secret
files (the fleet secrets and the node's own keys), and the node's signing key
(`sign`, `signing_public_key`). Records are encrypted under the fleet data key,
which exists on disk only sealed by the backend.

- softhsm: an AES-256 key and an HMAC key generated inside the token,
  non-extractable; sealing is AES-CBC-PAD then HMAC-SHA256, both computed by the
  token. The Ed25519 signing key is generated inside the token too.
- tpm: a 32-byte wrapping key sealed to the TPM's storage hierarchy with
  tpm2-tools (passed through stdin and stdout, never a file); sealing is
  AES-256-GCM under it; the signing key is kept sealed the same way.
- soft: the wrapping key in a file. Refused without --insecure-dev.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Protocol

from app.crypto import (
    CryptoError,
    DecryptionError,
    SigningKey,
    aead_open,
    aead_seal,
    constant_time_equal,
    random_bytes,
)


class BackendError(Exception):
    """The backend is missing, locked or refused an operation."""


class Backend(Protocol):
    name: str

    def seal(self, data: bytes) -> bytes: ...

    def unseal(self, blob: bytes) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...

    def signing_public_key(self) -> bytes: ...

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

    def close(self) -> None:
        pass


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

    def close(self) -> None:
        self._session.close()


class TpmBackend(_AeadSealing):
    name = "tpm"

    def __init__(self, data_dir: Path, tcti: str, *, create: bool) -> None:
        self._dir = data_dir / "tpm"
        self._env = {**os.environ, "TPM2TOOLS_TCTI": tcti}
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if create:
            self._tpm(
                "tpm2_createprimary",
                "-C",
                "o",
                "-g",
                "sha256",
                "-G",
                "ecc",
                "-c",
                str(self._dir / "primary.ctx"),
            )
            for name, secret in (
                ("wrap", random_bytes(32)),
                ("sign", SigningKey.generate().to_bytes()),
            ):
                self._tpm(
                    "tpm2_create",
                    "-C",
                    str(self._dir / "primary.ctx"),
                    "-i",
                    "-",
                    "-u",
                    str(self._dir / f"{name}.pub"),
                    "-r",
                    str(self._dir / f"{name}.priv"),
                    stdin=secret,
                )
        self._wrapping = self._unseal_object("wrap")
        try:
            self._signing = SigningKey(self._unseal_object("sign"))
        except CryptoError:
            raise BackendError("the TPM-sealed signing key is damaged") from None

    def _tpm(self, *argv: str, stdin: bytes | None = None) -> bytes:
        try:
            result = subprocess.run(
                list(argv), input=stdin, capture_output=True, env=self._env, timeout=60, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise BackendError(f"{argv[0]} could not run: {type(error).__name__}") from None
        # Without a resource manager, loaded objects outlive the command; the TPM
        # has room for only a few, so flush them after every step.
        if argv[0] != "tpm2_flushcontext":
            self._tpm("tpm2_flushcontext", "-t")
            self._tpm("tpm2_flushcontext", "-s")
        if result.returncode != 0:
            raise BackendError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')[-200:]}")
        return result.stdout

    def _unseal_object(self, name: str) -> bytes:
        # The loaded context is a handle, not the secret; it lives in a private temp dir.
        with tempfile.TemporaryDirectory(prefix="cl-tpm-") as scratch:
            context = str(Path(scratch) / f"{name}.ctx")
            self._tpm(
                "tpm2_load",
                "-C",
                str(self._dir / "primary.ctx"),
                "-u",
                str(self._dir / f"{name}.pub"),
                "-r",
                str(self._dir / f"{name}.priv"),
                "-c",
                context,
            )
            return self._tpm("tpm2_unseal", "-c", context)

    def sign(self, message: bytes) -> bytes:
        return self._signing.sign(message)

    def signing_public_key(self) -> bytes:
        return self._signing.verify_key().to_bytes()

    def close(self) -> None:
        pass


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
        return TpmBackend(data_dir, config.tpm_tcti, create=create)
    raise BackendError(f"unknown backend {config.backend!r}")
