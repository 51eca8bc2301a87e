"""Sealed sender: the envelope that hides who sent a message from the relay.

The relay delivers a sealed envelope knowing only its recipient. The sender's
account, device and identity key travel inside, in a sender certificate the relay
signed (so a recipient can trust the name), encrypted to the recipient's identity
key with a fresh ephemeral key per copy (so two copies, even of one group message,
share no bytes). As in Signal's sealed sender, the recipient then checks that the
certificate's identity key is the identity of the session (or sender key) that
opens the inner message: a certificate cannot lend its name to someone else's
message. docs/protocol.md, "Sealed sender", has the formats and test vectors.

Sender certificate (version 1):

    body = u8 version = 1 | text16 username | u32 device id
           | u16 len + sender identity (identity encoding) | u64 expires (ms since epoch)
    certificate = u16 len + body | 64-byte Ed25519 signature by the relay's
                  certificate key over CERTIFICATE_CONTEXT || body

Sealed envelope (version 1):

    u8 version = 1 | 32-byte ephemeral X25519 public key E | AES-256-GCM ciphertext
    key || nonce = HKDF-SHA256(ikm = X25519(e, recipient identity DH key),
                               salt = E || recipient identity DH key,
                               info = SEALED_INFO, 44 bytes)
    associated data = u8 version || E || recipient identity encoding
    plaintext = u8 inner version = 1 | u16 len + certificate | u32 len + frame
                | zero padding up to the size bucket (`padded_length`)

The key and nonce are used once: E is fresh for every envelope.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from app.crypto import (
    CryptoError,
    DhPrivateKey,
    DhPublicKey,
    Rng,
    SigningKey,
    SystemRng,
    VerifyKey,
    aead_open,
    aead_seal,
    hkdf_sha256,
    sha256,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import AuthenticationError, MalformedMessage, ProtocolError
from app.protocol.identity import DeviceIdentity, PublicIdentity

CERTIFICATE_VERSION = 1
SEALED_VERSION = 1
INNER_VERSION = 1
CERTIFICATE_CONTEXT = b"Cipherline_SenderCertificate_v1"
SEALED_INFO = b"Cipherline_SealedSender_v1"
ACCESS_KEY_INFO = b"Cipherline_UnidentifiedAccess_v1"
PROFILE_KEY_LENGTH = 32
ACCESS_KEY_LENGTH = 16
MAX_SEALED = 256 * 1024
MAX_CERTIFICATE = 1024
# Sizes the relay sees: the inner plaintext is padded to the next of these
# (powers of two from 512 bytes), so a sealed envelope tells its size only to
# within a factor of two; beyond the last, to a multiple of it.
SMALLEST_BUCKET = 512
LARGEST_BUCKET = 64 * 1024
# The overhead of the outer layer: version, ephemeral key, GCM tag.
OUTER_OVERHEAD = 1 + 32 + 16


class SealedSenderError(AuthenticationError):
    """A sealed envelope that cannot be accepted: its outer layer does not open."""


class CertificateError(SealedSenderError):
    """A sender certificate that is not signed by a pinned relay key, or malformed."""


class ExpiredCertificate(CertificateError):
    """A sender certificate past its expiry."""


class IdentityMismatch(CertificateError):
    """The certificate names an identity key other than the one whose session (or
    sender key) opens the inner message: someone else's name on a message."""


@dataclass(frozen=True)
class SenderCertificate:
    username: str
    device_id: int
    identity: bytes  # the identity encoding (PublicIdentity.to_bytes)
    expires: int
    signature: bytes
    body: bytes  # exactly what was signed, kept to re-encode byte for byte

    @staticmethod
    def issue(
        signer: SigningKey, username: str, device_id: int, identity: bytes, expires: int
    ) -> SenderCertificate:
        """The relay's side: a certificate for one device, valid until `expires`."""
        body = (
            Writer()
            .u8(CERTIFICATE_VERSION)
            .text16(username)
            .u32(device_id)
            .bytes16(identity)
            .u64(expires)
            .getvalue()
        )
        signature = signer.sign(CERTIFICATE_CONTEXT + body)
        return SenderCertificate(username, device_id, identity, expires, signature, body)

    def to_bytes(self) -> bytes:
        return Writer().bytes16(self.body).raw(self.signature).getvalue()

    def __repr__(self) -> str:
        return (
            f"SenderCertificate({self.username!r}, device {self.device_id}, expires {self.expires})"
        )

    @staticmethod
    def from_bytes(data: bytes) -> SenderCertificate:
        if len(data) > MAX_CERTIFICATE:
            raise CertificateError("the sender certificate is too large")
        try:
            reader = Reader(data, "sender certificate")
            body = reader.bytes16()
            signature = reader.raw(64)
            reader.end()
            fields = Reader(body, "sender certificate")
            fields.version(CERTIFICATE_VERSION)
            username = fields.text16()
            device_id = fields.u32()
            identity = fields.bytes16()
            expires = fields.u64()
            fields.end()
        except MalformedMessage as error:
            raise CertificateError(str(error)) from None
        return SenderCertificate(username, device_id, identity, expires, signature, body)

    def digest(self) -> bytes:
        return sha256(self.to_bytes())

    def verify(self, trusted: tuple[VerifyKey, ...], now: int) -> PublicIdentity:
        """The sender's identity, once the signature (by one of the pinned relay
        keys), the identity encoding and the expiry check out."""
        for key in trusted:
            try:
                key.verify(self.signature, CERTIFICATE_CONTEXT + self.body)
                break
            except CryptoError:
                continue
        else:
            raise CertificateError("the sender certificate is not signed by a pinned relay key")
        try:
            identity = PublicIdentity.from_bytes(self.identity)
        except ProtocolError:
            raise CertificateError("the sender certificate holds an invalid identity") from None
        if now >= self.expires:
            raise ExpiredCertificate("the sender certificate has expired")
        return identity


class CertificateCache:
    """Certificates already verified, by digest: a sender reuses one certificate
    for all its messages until it expires, so its two signature checks (the relay's
    and the identity's binding) are paid once, not per message. The expiry is still
    checked on every message."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._verified: OrderedDict[tuple[bytes, tuple[bytes, ...]], None] = OrderedDict()

    def verify(
        self, certificate: SenderCertificate, trusted: tuple[VerifyKey, ...], now: int
    ) -> None:
        key = (certificate.digest(), tuple(k.to_bytes() for k in trusted))
        if key in self._verified:
            if now >= certificate.expires:
                raise ExpiredCertificate("the sender certificate has expired")
            self._verified.move_to_end(key)
            return
        certificate.verify(trusted, now)
        self._verified[key] = None
        while len(self._verified) > self._size:
            self._verified.popitem(last=False)


@dataclass(frozen=True)
class Unsealed:
    certificate: SenderCertificate
    frame: bytes

    def __repr__(self) -> str:
        return f"Unsealed({self.certificate!r}, {len(self.frame)} bytes)"


def padded_length(length: int) -> int:
    """The size bucket `length` bytes of inner plaintext are padded to."""
    bucket = SMALLEST_BUCKET
    while bucket < length and bucket < LARGEST_BUCKET:
        bucket *= 2
    if length <= bucket:
        return bucket
    return -(-length // LARGEST_BUCKET) * LARGEST_BUCKET


def _keys(shared: bytes, ephemeral: bytes, recipient_dh: bytes) -> tuple[bytes, bytes]:
    okm = hkdf_sha256(shared, salt=ephemeral + recipient_dh, info=SEALED_INFO, length=44)
    return okm[:32], okm[32:]


def seal(
    recipient: PublicIdentity,
    certificate: bytes,
    frame: bytes,
    rng: Rng | None = None,
) -> bytes:
    """Seals `frame` (a pairwise or group frame) with the sender's certificate to
    `recipient`'s identity key."""
    rng = rng or SystemRng()
    inner = Writer().u8(INNER_VERSION).bytes16(certificate).bytes32(frame).getvalue()
    inner += bytes(padded_length(len(inner)) - len(inner))
    ephemeral = DhPrivateKey.generate(rng)
    ephemeral_public = ephemeral.public_key().to_bytes()
    recipient_dh = recipient.dh_key.to_bytes()
    try:
        shared = ephemeral.exchange(recipient.dh_key)
    except CryptoError:
        raise AuthenticationError("the recipient's identity key is unusable") from None
    key, nonce = _keys(shared, ephemeral_public, recipient_dh)
    header = bytes([SEALED_VERSION]) + ephemeral_public
    return header + aead_seal(key, nonce, inner, header + recipient.to_bytes())


def unseal(own: DeviceIdentity, data: bytes, own_public: PublicIdentity | None = None) -> Unsealed:
    """Opens the outer layer. The certificate is parsed, not yet verified: see
    `open_sealed`. `own_public` is `own.public`, passed by a caller that keeps it
    (computing it signs)."""
    if len(data) > MAX_SEALED + LARGEST_BUCKET + OUTER_OVERHEAD:
        raise MalformedMessage("the sealed envelope is too large")
    if len(data) < OUTER_OVERHEAD or data[0] != SEALED_VERSION:
        raise MalformedMessage("not a sealed envelope of a supported version")
    header, ciphertext = data[:33], data[33:]
    own_public = own_public or own.public
    try:
        shared = own.dh_key.exchange(DhPublicKey(header[1:]))
        key, nonce = _keys(shared, header[1:], own_public.dh_key.to_bytes())
        inner = aead_open(key, nonce, ciphertext, header + own_public.to_bytes())
    except CryptoError:
        raise SealedSenderError("the sealed envelope does not open with this identity") from None
    reader = Reader(inner, "sealed envelope")
    reader.version(INNER_VERSION)
    certificate = SenderCertificate.from_bytes(reader.bytes16())
    frame = reader.bytes32(MAX_SEALED)
    if any(reader.rest()):
        raise MalformedMessage("the sealed envelope's padding is not zero")
    return Unsealed(certificate, frame)


def open_sealed(
    own: DeviceIdentity,
    data: bytes,
    trusted: tuple[VerifyKey, ...],
    now: int,
    *,
    cache: CertificateCache | None = None,
    own_public: PublicIdentity | None = None,
) -> Unsealed:
    """Opens a sealed envelope and verifies its certificate (signature by a pinned
    relay key, expiry). Whether the certificate's identity is the inner message's
    is the caller's check (`check_identity`), once it knows which session opens it."""
    unsealed = unseal(own, data, own_public)
    if cache is not None:
        cache.verify(unsealed.certificate, trusted, now)
    else:
        unsealed.certificate.verify(trusted, now)
    return unsealed


def check_identity(certificate: SenderCertificate, identity: bytes) -> None:
    """Raises IdentityMismatch unless the certificate names `identity`."""
    if certificate.identity != identity:
        raise IdentityMismatch(
            "the sender certificate names another identity than the message's session"
        )


def access_key(profile_key: bytes) -> bytes:
    """The delivery token ("unidentified access key") a contact presents to the
    relay to send this device sealed mail; derived from the profile key the device
    shares with its contacts inside end-to-end encrypted messages."""
    if len(profile_key) != PROFILE_KEY_LENGTH:
        raise ValueError("a profile key is 32 bytes")
    return hkdf_sha256(profile_key, salt=None, info=ACCESS_KEY_INFO, length=ACCESS_KEY_LENGTH)
