"""Device identities, prekeys and the bundle a device publishes.

A device has two identity keys: Ed25519 for signatures and X25519 for key
agreement (no XEdDSA: `cryptography` has both primitives, and keeping them apart
avoids using one key in two algorithms). The identity encoding carries both and an
Ed25519 signature over the X25519 key, so the pair cannot be split and recombined.
Safety numbers cover the whole encoding.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from app.crypto import (
    MLKEM768_PUBLIC_KEY_LENGTH,
    CryptoError,
    DhPrivateKey,
    DhPublicKey,
    KemPrivateKey,
    KemPublicKey,
    Rng,
    SigningKey,
    SystemRng,
    VerifyKey,
    sha256,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import BundleError, MalformedMessage, ProtocolError

IDENTITY_VERSION = 1
PREKEY_VERSION = 1
LOCAL_PREKEYS_VERSION = 1
IDENTITY_CONTEXT = b"Cipherline identity v1"
SIGNED_PREKEY_CONTEXT = b"Cipherline signed prekey v1"
KEM_PREKEY_CONTEXT = b"Cipherline KEM prekey v1"
ONE_TIME_BATCH = 50
LOW_WATERMARK = 10


@dataclass(frozen=True)
class PublicIdentity:
    verify_key: VerifyKey
    dh_key: DhPublicKey
    binding_signature: bytes

    def to_bytes(self) -> bytes:
        return (
            Writer()
            .u8(IDENTITY_VERSION)
            .raw(self.verify_key.to_bytes())
            .raw(self.dh_key.to_bytes())
            .raw(self.binding_signature)
            .getvalue()
        )

    @staticmethod
    def from_bytes(data: bytes) -> PublicIdentity:
        reader = Reader(data, "identity key")
        reader.version(IDENTITY_VERSION)
        verify_raw, dh_raw, signature = reader.raw(32), reader.raw(32), reader.raw(64)
        reader.end()
        try:
            identity = PublicIdentity(VerifyKey(verify_raw), DhPublicKey(dh_raw), signature)
            identity.verify_key.verify(signature, IDENTITY_CONTEXT + dh_raw)
        except CryptoError:
            raise BundleError("the identity key's binding signature does not verify") from None
        return identity

    def fingerprint(self) -> bytes:
        return sha256(self.to_bytes())


@dataclass(frozen=True)
class DeviceIdentity:
    signing_key: SigningKey
    dh_key: DhPrivateKey

    @staticmethod
    def generate(rng: Rng | None = None) -> DeviceIdentity:
        return DeviceIdentity(SigningKey.generate(rng), DhPrivateKey.generate(rng))

    @property
    def public(self) -> PublicIdentity:
        dh_public = self.dh_key.public_key()
        signature = self.signing_key.sign(IDENTITY_CONTEXT + dh_public.to_bytes())
        return PublicIdentity(self.signing_key.verify_key(), dh_public, signature)

    def to_bytes(self) -> bytes:
        return (
            Writer()
            .u8(IDENTITY_VERSION)
            .raw(self.signing_key.to_bytes())
            .raw(self.dh_key.to_bytes())
            .getvalue()
        )

    @staticmethod
    def from_bytes(data: bytes) -> DeviceIdentity:
        reader = Reader(data, "private identity")
        reader.version(IDENTITY_VERSION)
        signing, dh = reader.raw(32), reader.raw(32)
        reader.end()
        return DeviceIdentity(SigningKey(signing), DhPrivateKey(dh))

    def __repr__(self) -> str:
        return "DeviceIdentity(<private>)"


def _signed_prekey_blob(prekey_id: int, public: bytes, signature: bytes) -> bytes:
    return Writer().u8(PREKEY_VERSION).u32(prekey_id).raw(public).raw(signature).getvalue()


def _kem_prekey_blob(prekey_id: int, public: bytes, signature: bytes) -> bytes:
    return Writer().u8(PREKEY_VERSION).u32(prekey_id).raw(public).raw(signature).getvalue()


def _sign_prekey(identity: DeviceIdentity, context: bytes, prekey_id: int, public: bytes) -> bytes:
    return identity.signing_key.sign(context + prekey_id.to_bytes(4, "big") + public)


@dataclass
class LocalPrekeys:
    """A device's private prekeys. The one-time ones are deleted once used."""

    signed_prekey_id: int
    signed_prekey: DhPrivateKey
    last_resort_id: int
    last_resort_kem: KemPrivateKey
    one_time: dict[int, DhPrivateKey] = field(default_factory=dict)
    one_time_kem: dict[int, KemPrivateKey] = field(default_factory=dict)
    next_id: int = 1
    unpublished: list[int] = field(default_factory=list)
    unpublished_kem: list[int] = field(default_factory=list)

    @staticmethod
    def generate(rng: Rng | None = None, *, batch: int = ONE_TIME_BATCH) -> LocalPrekeys:
        rng = rng or SystemRng()
        prekeys = LocalPrekeys(
            signed_prekey_id=1,
            signed_prekey=DhPrivateKey.generate(rng),
            last_resort_id=2,
            last_resort_kem=KemPrivateKey.generate(rng),
            next_id=3,
        )
        prekeys.refill(rng, batch=batch)
        return prekeys

    def refill(self, rng: Rng | None = None, *, batch: int = ONE_TIME_BATCH) -> None:
        rng = rng or SystemRng()
        for _ in range(batch):
            self.one_time[self.next_id] = DhPrivateKey.generate(rng)
            self.unpublished.append(self.next_id)
            self.next_id += 1
        for _ in range(batch):
            self.one_time_kem[self.next_id] = KemPrivateKey.generate(rng)
            self.unpublished_kem.append(self.next_id)
            self.next_id += 1

    def upload_json(self, identity: DeviceIdentity, *, full: bool = True) -> dict[str, Any]:
        """The relay's upload body: everything when `full`, else only new one-time keys."""

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii")

        body: dict[str, Any] = {
            "one_time_prekeys": [
                {"id": i, "key": b64(self._one_time_blob(i))}
                for i in self.unpublished
                if i in self.one_time
            ],
            "one_time_kem_prekeys": [
                {"id": i, "key": b64(self._kem_blob(identity, i, self.one_time_kem[i]))}
                for i in self.unpublished_kem
                if i in self.one_time_kem
            ],
        }
        if full:
            spk_public = self.signed_prekey.public_key().to_bytes()
            body["identity"] = b64(identity.public.to_bytes())
            body["signed_prekey"] = b64(
                _signed_prekey_blob(
                    self.signed_prekey_id,
                    spk_public,
                    _sign_prekey(
                        identity, SIGNED_PREKEY_CONTEXT, self.signed_prekey_id, spk_public
                    ),
                )
            )
            body["last_resort_kem_prekey"] = b64(
                self._kem_blob(identity, self.last_resort_id, self.last_resort_kem)
            )
        return body

    def mark_published(self) -> None:
        self.unpublished.clear()
        self.unpublished_kem.clear()

    def _one_time_blob(self, prekey_id: int) -> bytes:
        public = self.one_time[prekey_id].public_key().to_bytes()
        return Writer().u8(PREKEY_VERSION).u32(prekey_id).raw(public).getvalue()

    @staticmethod
    def _kem_blob(identity: DeviceIdentity, prekey_id: int, key: KemPrivateKey) -> bytes:
        public = key.public_key().to_bytes()
        signature = _sign_prekey(identity, KEM_PREKEY_CONTEXT, prekey_id, public)
        return _kem_prekey_blob(prekey_id, public, signature)

    def to_bytes(self) -> bytes:
        writer = (
            Writer()
            .u8(LOCAL_PREKEYS_VERSION)
            .u32(self.signed_prekey_id)
            .raw(self.signed_prekey.to_bytes())
            .u32(self.last_resort_id)
            .raw(self.last_resort_kem.to_bytes())
            .u32(self.next_id)
            .u32(len(self.one_time))
        )
        for prekey_id, key in sorted(self.one_time.items()):
            writer.u32(prekey_id).raw(key.to_bytes())
        writer.u32(len(self.one_time_kem))
        for prekey_id, kem in sorted(self.one_time_kem.items()):
            writer.u32(prekey_id).raw(kem.to_bytes())
        writer.u32(len(self.unpublished))
        for prekey_id in self.unpublished:
            writer.u32(prekey_id)
        writer.u32(len(self.unpublished_kem))
        for prekey_id in self.unpublished_kem:
            writer.u32(prekey_id)
        return writer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> LocalPrekeys:
        reader = Reader(data, "prekey store")
        reader.version(LOCAL_PREKEYS_VERSION)
        prekeys = LocalPrekeys(
            signed_prekey_id=reader.u32(),
            signed_prekey=DhPrivateKey(reader.raw(32)),
            last_resort_id=reader.u32(),
            last_resort_kem=KemPrivateKey(reader.raw(64)),
            next_id=reader.u32(),
        )
        for _ in range(reader.u32()):
            prekey_id = reader.u32()
            prekeys.one_time[prekey_id] = DhPrivateKey(reader.raw(32))
        for _ in range(reader.u32()):
            prekey_id = reader.u32()
            prekeys.one_time_kem[prekey_id] = KemPrivateKey(reader.raw(64))
        prekeys.unpublished = [reader.u32() for _ in range(reader.u32())]
        prekeys.unpublished_kem = [reader.u32() for _ in range(reader.u32())]
        reader.end()
        return prekeys

    def __repr__(self) -> str:
        return f"LocalPrekeys({len(self.one_time)} one-time, {len(self.one_time_kem)} KEM)"


@dataclass(frozen=True)
class RemoteBundle:
    """One device's published keys, signatures verified."""

    device_id: int
    identity: PublicIdentity
    signed_prekey_id: int
    signed_prekey: DhPublicKey
    kem_prekey_id: int
    kem_prekey: KemPublicKey
    kem_is_last_resort: bool
    one_time_prekey_id: int | None
    one_time_prekey: DhPublicKey | None

    @staticmethod
    def from_fetched_device(entry: dict[str, Any]) -> RemoteBundle:
        try:
            return RemoteBundle._parse(entry)
        except BundleError:
            raise
        except (ProtocolError, CryptoError, KeyError, TypeError, ValueError, binascii.Error):
            raise BundleError("the prekey bundle is malformed") from None

    @staticmethod
    def _parse(entry: dict[str, Any]) -> RemoteBundle:
        def unb64(value: Any) -> bytes:
            if not isinstance(value, str):
                raise BundleError("a bundle field is not base64 text")
            return base64.b64decode(value, validate=True)

        identity = PublicIdentity.from_bytes(unb64(entry["identity"]))

        def signed(blob: bytes, key_length: int, context: bytes) -> tuple[int, bytes]:
            reader = Reader(blob, "signed prekey")
            reader.version(PREKEY_VERSION)
            prekey_id, public, signature = reader.u32(), reader.raw(key_length), reader.raw(64)
            reader.end()
            try:
                identity.verify_key.verify(
                    signature, context + prekey_id.to_bytes(4, "big") + public
                )
            except CryptoError:
                raise BundleError("a prekey signature does not verify") from None
            return prekey_id, public

        spk_id, spk = signed(unb64(entry["signed_prekey"]), 32, SIGNED_PREKEY_CONTEXT)
        kem_entry = entry.get("one_time_kem_prekey")
        last_resort = kem_entry is None
        if kem_entry is None:
            kem_blob = unb64(entry["last_resort_kem_prekey"])
        else:
            kem_blob = unb64(kem_entry["key"])
        kem_id, kem = signed(kem_blob, MLKEM768_PUBLIC_KEY_LENGTH, KEM_PREKEY_CONTEXT)
        otk_id: int | None = None
        otk: DhPublicKey | None = None
        otk_entry = entry.get("one_time_prekey")
        if otk_entry is not None:
            reader = Reader(unb64(otk_entry["key"]), "one-time prekey")
            reader.version(PREKEY_VERSION)
            otk_id, otk = reader.u32(), DhPublicKey(reader.raw(32))
            reader.end()
        device_id = entry["device_id"]
        if not isinstance(device_id, int):
            raise MalformedMessage("device id is not a number")
        return RemoteBundle(
            device_id=device_id,
            identity=identity,
            signed_prekey_id=spk_id,
            signed_prekey=DhPublicKey(spk),
            kem_prekey_id=kem_id,
            kem_prekey=KemPublicKey(kem),
            kem_is_last_resort=last_resort,
            one_time_prekey_id=otk_id,
            one_time_prekey=otk,
        )
