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
LOCAL_PREKEYS_VERSION = 2
LEGACY_LOCAL_PREKEYS_VERSION = 1  # one signed prekey for life, ids 1 and 2; still read
IDENTITY_CONTEXT = b"Cipherline identity v1"
SIGNED_PREKEY_CONTEXT = b"Cipherline signed prekey v1"
KEM_PREKEY_CONTEXT = b"Cipherline KEM prekey v1"
ONE_TIME_BATCH = 50
LOW_WATERMARK = 10

# Prekey lifetimes (docs/protocol.md §1, "Prekey lifetimes"). The signed prekey and
# the last-resort KEM prekey are replaced every ROTATION_PERIOD_MS; a replaced one is
# kept GRACE_PERIOD_MS after its successor was published, for late first messages,
# then its private keys are deleted.
DAY_MS = 86_400_000
ROTATION_PERIOD_MS = 7 * DAY_MS
GRACE_PERIOD_MS = 14 * DAY_MS
# Id ranges, so that an id says what it was even after its key is deleted: one-time
# keys count up from 3; generation g of the long-lived keys has the signed prekey id
# SIGNED_PREKEY_ID_BASE + g and the last-resort id LAST_RESORT_ID_BASE + g. Format 1
# stores had one generation with the ids 1 and 2 (no other store uses 1 and 2).
LEGACY_SIGNED_PREKEY_ID = 1
LEGACY_LAST_RESORT_ID = 2
FIRST_ONE_TIME_ID = 3
SIGNED_PREKEY_ID_BASE = 0x8000_0000
LAST_RESORT_ID_BASE = 0xC000_0000
MAX_GENERATION = 0x3FFF_FFFF
FLAG_CURRENT_PUBLISHED = 1
FLAG_FROM_FORMAT_1 = 2


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


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class PrekeyGeneration:
    """One signed prekey and the last-resort KEM prekey made and published with it.

    Generation g (from 1) has the ids `SIGNED_PREKEY_ID_BASE + g` and
    `LAST_RESORT_ID_BASE + g`; format 1's only generation had the ids 1 and 2.
    `published_at` (ms) is when the relay began to serve it (until then, when it was
    made); its rotation period runs from there. 0 means unknown (a format 1 store)
    and makes it due at once. `retired_at` is set when a successor has been
    published (the relay no longer hands this one out); its grace period runs from
    then. While it is None a retired generation may still be served, so it is kept
    however long that takes."""

    signed_prekey_id: int
    signed_prekey: DhPrivateKey
    last_resort_id: int
    last_resort_kem: KemPrivateKey
    published_at: int
    retired_at: int | None = None

    @staticmethod
    def generate(generation: int, now: int, rng: Rng | None = None) -> PrekeyGeneration:
        if not 1 <= generation <= MAX_GENERATION:
            raise ProtocolError("no signed prekey ids are left")
        return PrekeyGeneration(
            SIGNED_PREKEY_ID_BASE + generation,
            DhPrivateKey.generate(rng),
            LAST_RESORT_ID_BASE + generation,
            KemPrivateKey.generate(rng),
            now,
        )

    def write(self, writer: Writer) -> None:
        writer.u32(self.signed_prekey_id).raw(self.signed_prekey.to_bytes())
        writer.u32(self.last_resort_id).raw(self.last_resort_kem.to_bytes())
        writer.u64(self.published_at)
        if self.retired_at is None:
            writer.u8(0)
        else:
            writer.u8(1).u64(self.retired_at)

    @staticmethod
    def read(reader: Reader) -> PrekeyGeneration:
        generation = PrekeyGeneration(
            reader.u32(),
            DhPrivateKey(reader.raw(32)),
            reader.u32(),
            KemPrivateKey(reader.raw(64)),
            reader.u64(),
        )
        flag = reader.u8()
        if flag not in (0, 1):
            raise MalformedMessage("bad retired flag in the prekey store")
        if flag:
            generation.retired_at = reader.u64()
        return generation

    def __repr__(self) -> str:
        return (
            f"PrekeyGeneration(signed {self.signed_prekey_id}, last resort"
            f" {self.last_resort_id}, <private>)"
        )


class PrekeyUpload:
    """One `PUT /v1/keys` body (public keys only) and which keys it publishes, so
    that exactly those are marked published once the relay has them."""

    __slots__ = ("body", "one_time_ids", "one_time_kem_ids", "signed_prekey_id")

    def __init__(
        self,
        body: dict[str, Any],
        signed_prekey_id: int | None,
        one_time_ids: tuple[int, ...],
        one_time_kem_ids: tuple[int, ...],
    ) -> None:
        self.body = body
        self.signed_prekey_id = signed_prekey_id  # None: the long-lived keys are not in it
        self.one_time_ids = one_time_ids
        self.one_time_kem_ids = one_time_kem_ids

    def __repr__(self) -> str:
        return (
            f"PrekeyUpload(signed {self.signed_prekey_id}, {len(self.one_time_ids)} one-time,"
            f" {len(self.one_time_kem_ids)} KEM)"
        )


@dataclass
class LocalPrekeys:
    """A device's private prekeys.

    One-time keys are deleted once used. The signed prekey and the last-resort KEM
    prekey come in generations (`PrekeyGeneration`): `current` is what the relay
    hands out (or will, once `current_published`); `retired` ones are kept through
    their grace period so that late first messages still open, then deleted
    (`expire`), which is what makes a session start that used no one-time prekey
    unreadable after a later compromise of this device. The clock is the caller's
    (milliseconds), as is the schedule (`rotate_if_due`, `expire`)."""

    current: PrekeyGeneration
    retired: list[PrekeyGeneration] = field(default_factory=list)
    current_published: bool = False
    next_generation: int = 2
    # Made in format 1: the ids 1 and 2 were its first signed and last-resort prekey.
    from_format_1: bool = False
    one_time: dict[int, DhPrivateKey] = field(default_factory=dict)
    one_time_kem: dict[int, KemPrivateKey] = field(default_factory=dict)
    next_id: int = FIRST_ONE_TIME_ID
    unpublished: list[int] = field(default_factory=list)
    unpublished_kem: list[int] = field(default_factory=list)

    @staticmethod
    def generate(
        rng: Rng | None = None, *, batch: int = ONE_TIME_BATCH, now: int = 0
    ) -> LocalPrekeys:
        """A new device's prekeys. `now` (ms) starts the first rotation period; left
        at 0 the first generation is rotated at the first check."""
        rng = rng or SystemRng()
        prekeys = LocalPrekeys(current=PrekeyGeneration.generate(1, now, rng))
        prekeys.refill(rng, batch=batch)
        return prekeys

    # ---- the current generation, as before rotation existed -----------------------
    @property
    def signed_prekey_id(self) -> int:
        return self.current.signed_prekey_id

    @property
    def signed_prekey(self) -> DhPrivateKey:
        return self.current.signed_prekey

    @property
    def last_resort_id(self) -> int:
        return self.current.last_resort_id

    @property
    def last_resort_kem(self) -> KemPrivateKey:
        return self.current.last_resort_kem

    # ---- which long-lived keys a session start may name ------------------------------
    @property
    def generations(self) -> list[PrekeyGeneration]:
        """Every generation whose private keys are held: the current one first."""
        return [self.current, *self.retired]

    def signed_prekey_for(self, prekey_id: int) -> DhPrivateKey | None:
        for generation in self.generations:
            if generation.signed_prekey_id == prekey_id:
                return generation.signed_prekey
        return None

    def last_resort_for(self, prekey_id: int) -> KemPrivateKey | None:
        for generation in self.generations:
            if generation.last_resort_id == prekey_id:
                return generation.last_resort_kem
        return None

    def held_signed_prekey_ids(self) -> frozenset[int]:
        return frozenset(g.signed_prekey_id for g in self.generations)

    def held_last_resort_ids(self) -> frozenset[int]:
        return frozenset(g.last_resort_id for g in self.generations)

    def had_signed_prekey(self, prekey_id: int) -> bool:
        """True for the id of a signed prekey this device made, held or deleted."""
        if prekey_id == LEGACY_SIGNED_PREKEY_ID:
            return self.from_format_1
        return SIGNED_PREKEY_ID_BASE < prekey_id < SIGNED_PREKEY_ID_BASE + self.next_generation

    def had_last_resort(self, prekey_id: int) -> bool:
        """True for the id of a last-resort KEM prekey this device made."""
        if prekey_id == LEGACY_LAST_RESORT_ID:
            return self.from_format_1
        return LAST_RESORT_ID_BASE < prekey_id < LAST_RESORT_ID_BASE + self.next_generation

    # ---- rotation -------------------------------------------------------------------
    def rotation_due(self, now: int, *, period: int = ROTATION_PERIOD_MS) -> bool:
        """Due once the relay has served the current generation for `period`. Never
        while it is unpublished: it is uploaded first, or the relay would go on
        serving its predecessor while that is already on its way out."""
        published = self.current.published_at
        return self.current_published and (published == 0 or now - published >= period)

    def rotate(self, now: int, rng: Rng | None = None) -> PrekeyGeneration:
        """Makes a new current generation (fresh ids, never reused). The old one is
        retired but kept; its grace period starts when the new one is published."""
        fresh = PrekeyGeneration.generate(self.next_generation, now, rng)
        self.next_generation += 1
        self.retired.insert(0, self.current)
        self.current = fresh
        self.current_published = False
        return fresh

    def rotate_if_due(
        self, now: int, rng: Rng | None = None, *, period: int = ROTATION_PERIOD_MS
    ) -> bool:
        if not self.rotation_due(now, period=period):
            return False
        self.rotate(now, rng)
        return True

    def expire(self, now: int, *, grace: int = GRACE_PERIOD_MS) -> list[tuple[int, int]]:
        """Deletes the retired generations whose grace period is over; returns their
        (signed prekey id, last-resort id). A session start naming them is refused
        from then on (`ExpiredPrekey`)."""
        if self.current_published:
            for generation in self.retired:
                if generation.retired_at is None:
                    generation.retired_at = now  # published without a time: count from now
        kept: list[PrekeyGeneration] = []
        gone: list[tuple[int, int]] = []
        for generation in self.retired:
            retired_at = generation.retired_at
            if retired_at is not None and now - retired_at >= grace:
                gone.append((generation.signed_prekey_id, generation.last_resort_id))
            else:
                kept.append(generation)
        self.retired = kept
        return gone

    # ---- one-time keys ----------------------------------------------------------------
    def refill(self, rng: Rng | None = None, *, batch: int = ONE_TIME_BATCH) -> None:
        rng = rng or SystemRng()
        if self.next_id + 2 * batch >= SIGNED_PREKEY_ID_BASE:
            raise ProtocolError("no one-time prekey ids are left")
        for _ in range(batch):
            self.one_time[self.next_id] = DhPrivateKey.generate(rng)
            self.unpublished.append(self.next_id)
            self.next_id += 1
        for _ in range(batch):
            self.one_time_kem[self.next_id] = KemPrivateKey.generate(rng)
            self.unpublished_kem.append(self.next_id)
            self.next_id += 1

    # ---- publishing -------------------------------------------------------------------
    def upload_json(self, identity: DeviceIdentity, *, full: bool = True) -> dict[str, Any]:
        """The relay's upload body: everything when `full`, else only new one-time keys."""
        body: dict[str, Any] = {
            "one_time_prekeys": [
                {"id": i, "key": _b64(self._one_time_blob(i))}
                for i in self.unpublished
                if i in self.one_time
            ],
            "one_time_kem_prekeys": [
                {"id": i, "key": _b64(self._kem_blob(identity, i, self.one_time_kem[i]))}
                for i in self.unpublished_kem
                if i in self.one_time_kem
            ],
        }
        if full:
            current = self.current
            spk_public = current.signed_prekey.public_key().to_bytes()
            body["identity"] = _b64(identity.public.to_bytes())
            body["signed_prekey"] = _b64(
                _signed_prekey_blob(
                    current.signed_prekey_id,
                    spk_public,
                    _sign_prekey(
                        identity, SIGNED_PREKEY_CONTEXT, current.signed_prekey_id, spk_public
                    ),
                )
            )
            body["last_resort_kem_prekey"] = _b64(
                self._kem_blob(identity, current.last_resort_id, current.last_resort_kem)
            )
        return body

    def pending_upload(
        self, identity: DeviceIdentity, *, long_lived: bool = False
    ) -> PrekeyUpload | None:
        """What the relay does not have yet: unpublished one-time keys, and the
        current signed and last-resort prekeys if they are unpublished (or always,
        with `long_lived`: the relay then serves exactly what this device holds).
        None when there is nothing to send."""
        full = long_lived or not self.current_published
        body = self.upload_json(identity, full=full)
        one_time = tuple(entry["id"] for entry in body["one_time_prekeys"])
        one_time_kem = tuple(entry["id"] for entry in body["one_time_kem_prekeys"])
        if not (full or one_time or one_time_kem):
            return None
        return PrekeyUpload(
            body, self.current.signed_prekey_id if full else None, one_time, one_time_kem
        )

    def mark_uploaded(self, upload: PrekeyUpload, now: int) -> None:
        """The relay has `upload`. If it carried the current generation, that is now
        what the relay serves: its rotation period, and the grace period of the
        ones before it, start `now`."""
        published, published_kem = set(upload.one_time_ids), set(upload.one_time_kem_ids)
        self.unpublished = [i for i in self.unpublished if i not in published]
        self.unpublished_kem = [i for i in self.unpublished_kem if i not in published_kem]
        if upload.signed_prekey_id == self.current.signed_prekey_id:
            if not self.current_published:
                self.current.published_at = now
            self.current_published = True
            for generation in self.retired:
                if generation.retired_at is None:
                    generation.retired_at = now

    def mark_published(self) -> None:
        """Everything `upload_json()` returned is on the relay (a new device's first
        upload). Retired generations, if any, start their grace at the next `expire`."""
        self.unpublished.clear()
        self.unpublished_kem.clear()
        self.current_published = True

    def _one_time_blob(self, prekey_id: int) -> bytes:
        public = self.one_time[prekey_id].public_key().to_bytes()
        return Writer().u8(PREKEY_VERSION).u32(prekey_id).raw(public).getvalue()

    @staticmethod
    def _kem_blob(identity: DeviceIdentity, prekey_id: int, key: KemPrivateKey) -> bytes:
        public = key.public_key().to_bytes()
        signature = _sign_prekey(identity, KEM_PREKEY_CONTEXT, prekey_id, public)
        return _kem_prekey_blob(prekey_id, public, signature)

    # ---- persistence ------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """Format 2:

            u8 2 | u32 next generation | u8 flags | u32 next one-time id
            generation current | u32 n | n retired generations
            u32 n | n x (u32 id, 32 X25519 private)     one-time prekeys
            u32 n | n x (u32 id, 64 ML-KEM-768 seed)    one-time KEM prekeys
            u32 n | n x u32 unpublished id | u32 n | n x u32 unpublished KEM id

        generation = u32 signed prekey id, 32 X25519 private, u32 last-resort id,
        64 ML-KEM-768 seed, u64 published at, u8 has-retired-at [u64 retired at];
        flags: bit 0 the current generation is published, bit 1 made in format 1."""
        writer = (
            Writer()
            .u8(LOCAL_PREKEYS_VERSION)
            .u32(self.next_generation)
            .u8(
                (FLAG_CURRENT_PUBLISHED if self.current_published else 0)
                | (FLAG_FROM_FORMAT_1 if self.from_format_1 else 0)
            )
            .u32(self.next_id)
        )
        self.current.write(writer)
        writer.u32(len(self.retired))
        for generation in self.retired:
            generation.write(writer)
        self._write_one_time(writer)
        return writer.getvalue()

    def _write_one_time(self, writer: Writer) -> None:
        writer.u32(len(self.one_time))
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

    def _read_one_time(self, reader: Reader) -> None:
        for _ in range(reader.u32()):
            prekey_id = reader.u32()
            self.one_time[prekey_id] = DhPrivateKey(reader.raw(32))
        for _ in range(reader.u32()):
            prekey_id = reader.u32()
            self.one_time_kem[prekey_id] = KemPrivateKey(reader.raw(64))
        self.unpublished = [reader.u32() for _ in range(reader.u32())]
        self.unpublished_kem = [reader.u32() for _ in range(reader.u32())]

    @staticmethod
    def from_bytes(data: bytes) -> LocalPrekeys:
        """Reads format 2 and format 1 (one generation with the fixed ids 1 and 2, of
        unknown age, published: it is rotated at the first check)."""
        reader = Reader(data, "prekey store")
        version = reader.u8()
        if version == LEGACY_LOCAL_PREKEYS_VERSION:
            prekeys = LocalPrekeys._read_legacy(reader)
        elif version == LOCAL_PREKEYS_VERSION:
            next_generation = reader.u32()
            flags = reader.u8()
            if flags & ~(FLAG_CURRENT_PUBLISHED | FLAG_FROM_FORMAT_1):
                raise MalformedMessage("unknown flags in the prekey store")
            next_id = reader.u32()
            current = PrekeyGeneration.read(reader)
            retired = [PrekeyGeneration.read(reader) for _ in range(reader.u32())]
            prekeys = LocalPrekeys(
                current=current,
                retired=retired,
                current_published=bool(flags & FLAG_CURRENT_PUBLISHED),
                next_generation=next_generation,
                from_format_1=bool(flags & FLAG_FROM_FORMAT_1),
                next_id=next_id,
            )
        else:
            raise MalformedMessage(f"prekey store version {version} is not supported")
        prekeys._read_one_time(reader)
        reader.end()
        return prekeys

    @staticmethod
    def _read_legacy(reader: Reader) -> LocalPrekeys:
        current = PrekeyGeneration(
            signed_prekey_id=reader.u32(),
            signed_prekey=DhPrivateKey(reader.raw(32)),
            last_resort_id=reader.u32(),
            last_resort_kem=KemPrivateKey(reader.raw(64)),
            published_at=0,
        )
        return LocalPrekeys(
            current=current,
            current_published=True,
            next_generation=1,
            from_format_1=True,
            next_id=reader.u32(),
        )

    def __repr__(self) -> str:
        return (
            f"LocalPrekeys(signed {self.signed_prekey_id}, {len(self.retired)} retired,"
            f" {len(self.one_time)} one-time, {len(self.one_time_kem)} KEM)"
        )


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
