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

Sealed channels (the fast path, as Briar/Bramble's transport tags): a version 1
envelope may carry, in inner version 2, a fresh random 32-byte channel seed:

    plaintext = u8 inner version = 2 | u16 len + certificate | 32-byte channel seed
                | u32 len + frame | zero padding

Both sides then derive one symmetric chain from it, bound to the certificate that
opened it and to the recipient's identity:

    CK_0 = HKDF-SHA256(seed, salt = SHA-256(certificate),
                       info = CHANNEL_INFO || recipient identity encoding, 32)
    T_i = BLAKE2b(key = CK_i, person = CHANNEL_TAG_PERSON, 28 bytes, of the empty
                  message):   tag_i = T_i[0:16], nonce_i = T_i[16:28]
    M_i = BLAKE2b(key = CK_i, person = CHANNEL_STEP_PERSON, 64 bytes, of the empty
                  message):   K_i = M_i[0:32] (the AES-256-GCM key),
                              CK_i+1 = M_i[32:64] (CK_i then deleted)

(keyed BLAKE2b, RFC 7693, with no salt and the personalization strings padded
with zero bytes to 16, as libsodium's crypto_kdf derives subkeys).

and message i of the channel travels as

    u8 version = 2 | tag_i | AES-256-GCM(K_i, nonce_i, inner, AD = u8 2 || tag_i)
    inner = u32 len + frame | zero padding up to `padded_length`

The tag is a PRF output: to the relay it is 16 random bytes, new for every
envelope, so channel envelopes carry no sender and no stable identifier. The
recipient keeps a window of the next expected tags and the keys behind them; a
tag opens once (its key is deleted), so a replay does not open.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

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
    blake2b_keyed,
    hkdf_sha256,
    sha256,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import AuthenticationError, MalformedMessage, ProtocolError, ReplayError
from app.protocol.identity import DeviceIdentity, PublicIdentity

CERTIFICATE_VERSION = 1
SEALED_VERSION = 1
INNER_VERSION = 1
# A version 1 envelope whose inner message also opens a channel (carries a seed).
INNER_CHANNEL_VERSION = 2
# The outer version of a channel envelope.
CHANNEL_VERSION = 2
CHANNEL_INFO = b"Cipherline_SealedChannel_v1"
CHANNEL_SEED_LENGTH = 32
CHANNEL_TAG_LENGTH = 16
# Tags the recipient expects beyond the newest one it received: how far envelopes
# may be lost or overtake each other. Twice as many are held at most (those
# skipped behind the newest stay, for late envelopes), and as many spent tags
# are remembered to tell a replay from an unknown tag.
CHANNEL_WINDOW = 32
# Messages per channel: then the sender opens a new one (the recipient never
# derives further).
CHANNEL_MAX_MESSAGES = 10_000
CHANNEL_STATE_VERSION = 1
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
# The overhead of a channel envelope: version, channel tag, GCM tag.
CHANNEL_OVERHEAD = 1 + CHANNEL_TAG_LENGTH + 16


class SealedSenderError(AuthenticationError):
    """A sealed envelope that cannot be accepted: its outer layer does not open."""


class CertificateError(SealedSenderError):
    """A sender certificate that is not signed by a pinned relay key, or malformed."""


class ExpiredCertificate(CertificateError):
    """A sender certificate past its expiry."""


class IdentityMismatch(CertificateError):
    """The certificate names an identity key other than the one whose session (or
    sender key) opens the inner message: someone else's name on a message."""


class UnknownChannelTag(SealedSenderError):
    """A channel envelope whose tag is in no window this device holds: a channel it
    never saw opened, one that ended, or a tag too far behind or ahead."""


class ChannelReplay(ReplayError):
    """A channel envelope whose tag was already spent: the same envelope again."""


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
    # The seed of the channel a version 1 envelope opens (None: it opens none).
    channel_seed: bytes | None = field(default=None, repr=False)

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
    *,
    channel_seed: bytes | None = None,
) -> bytes:
    """Seals `frame` (a pairwise or group frame) with the sender's certificate to
    `recipient`'s identity key; with `channel_seed`, the envelope also opens the
    channel of that seed (`SendChannel.start`)."""
    rng = rng or SystemRng()
    writer = Writer()
    if channel_seed is None:
        writer.u8(INNER_VERSION).bytes16(certificate)
    else:
        if len(channel_seed) != CHANNEL_SEED_LENGTH:
            raise ValueError("a channel seed is 32 bytes")
        writer.u8(INNER_CHANNEL_VERSION).bytes16(certificate).raw(channel_seed)
    inner = writer.bytes32(frame).getvalue()
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
    version = reader.u8()
    if version not in (INNER_VERSION, INNER_CHANNEL_VERSION):
        raise MalformedMessage(f"sealed envelope version {version} is not supported")
    certificate = SenderCertificate.from_bytes(reader.bytes16())
    seed = reader.raw(CHANNEL_SEED_LENGTH) if version == INNER_CHANNEL_VERSION else None
    frame = reader.bytes32(MAX_SEALED)
    if not _zero(reader.rest()):
        raise MalformedMessage("the sealed envelope's padding is not zero")
    return Unsealed(certificate, frame, seed)


def _zero(data: bytes) -> bool:
    # Compared in C: a byte-by-byte any() over a padding bucket costs as much as
    # the AES-GCM that opened it.
    return data == bytes(len(data))


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


# ---- sealed channels ------------------------------------------------------------
# Labels of their own (docs/protocol.md §10): the ratchet's 0x01/0x02 are not reused.
# BLAKE2b personalization strings (16 bytes at most).
CHANNEL_TAG_PERSON = b"CL-channel-tag"
CHANNEL_STEP_PERSON = b"CL-channel-step"
_MAX_CHANNEL_ENVELOPE = MAX_SEALED + LARGEST_BUCKET + CHANNEL_OVERHEAD


def channel_chain_key(seed: bytes, certificate: bytes, recipient: bytes) -> bytes:
    """CK_0 of the channel `seed` opens: bound to the certificate of the envelope
    that carried it and to the recipient's identity encoding, so a seed replayed
    under another certificate, or to another device, gives an unrelated chain."""
    if len(seed) != CHANNEL_SEED_LENGTH:
        raise ValueError("a channel seed is 32 bytes")
    return hkdf_sha256(seed, salt=sha256(certificate), info=CHANNEL_INFO + recipient, length=32)


def _channel_step(chain_key: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(tag, AES key, nonce, next chain key) of the message CK_i belongs to.

    Two keyed BLAKE2b calls a step (one pass each, where HMAC takes two): the step
    runs on both sides of every message and the window derives ahead, so it is
    most of a channel message's cost above the ratchet's."""
    tag_block = blake2b_keyed(chain_key, b"", 28, CHANNEL_TAG_PERSON)
    key_block = blake2b_keyed(chain_key, b"", 64, CHANNEL_STEP_PERSON)
    return (
        tag_block[:CHANNEL_TAG_LENGTH],
        key_block[:32],
        tag_block[CHANNEL_TAG_LENGTH:],
        key_block[32:],
    )


def channel_id(seed: bytes) -> bytes:
    """A local name for the channel of `seed` (it never leaves the device): how the
    recipient knows a seed announced again, or replayed, from a new one."""
    return sha256(CHANNEL_INFO + b" id" + seed)[:16]


def is_channel_envelope(data: bytes) -> bool:
    return bool(data) and data[0] == CHANNEL_VERSION


class SendChannel:
    """The sender's end of a channel: the chain key of the next message and its
    index. Each `seal` uses a message key once and steps the chain past it."""

    __slots__ = ("_chain_key", "index")

    def __init__(self, chain_key: bytes, index: int) -> None:
        self._chain_key = chain_key
        self.index = index

    @staticmethod
    def start(seed: bytes, certificate: bytes, recipient: bytes) -> SendChannel:
        return SendChannel(channel_chain_key(seed, certificate, recipient), 0)

    @property
    def exhausted(self) -> bool:
        return self.index >= CHANNEL_MAX_MESSAGES

    def seal(self, frame: bytes) -> bytes:
        """The channel envelope of `frame`; raises ValueError past the last message."""
        if self.exhausted:
            raise ValueError("the channel has carried its last message")
        if len(frame) > MAX_SEALED:
            raise ValueError("the frame is too large to seal")
        tag, key, nonce, self._chain_key = _channel_step(self._chain_key)
        self.index += 1
        inner = len(frame).to_bytes(4, "big") + frame
        inner += bytes(padded_length(len(inner)) - len(inner))
        header = bytes([CHANNEL_VERSION]) + tag
        return header + aead_seal(key, nonce, inner, header)

    def to_bytes(self) -> bytes:
        return Writer().u8(CHANNEL_STATE_VERSION).raw(self._chain_key).u32(self.index).getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> SendChannel:
        reader = Reader(data, "sending channel state")
        reader.version(CHANNEL_STATE_VERSION)
        chain_key = reader.raw(32)
        index = reader.u32()
        reader.end()
        return SendChannel(chain_key, index)

    def __repr__(self) -> str:
        return f"SendChannel(next {self.index}, <keys hidden>)"


@dataclass(frozen=True)
class _Expected:
    index: int
    key: bytes = field(repr=False)
    nonce: bytes = field(repr=False)


class ReceiveChannel:
    """The recipient's end: the certificate that opened the channel, the keys of
    the tags it expects (the next CHANNEL_WINDOW beyond the newest received, and
    up to as many skipped behind it), the chain key past them, and the tags
    already spent (to report a replay as one)."""

    __slots__ = ("_chain_key", "_expected", "_highest", "_next", "_spent", "certificate")

    def __init__(
        self,
        certificate: bytes,
        chain_key: bytes,
        *,
        next_index: int,
        highest: int,
        expected: dict[bytes, _Expected],
        spent: OrderedDict[bytes, None],
    ) -> None:
        self.certificate = certificate
        self._chain_key = chain_key
        self._next = next_index  # the index `_chain_key` belongs to
        self._highest = highest  # one past the newest index received
        self._expected = expected
        self._spent = spent

    @staticmethod
    def start(seed: bytes, certificate: bytes, recipient: bytes) -> ReceiveChannel:
        channel = ReceiveChannel(
            certificate,
            channel_chain_key(seed, certificate, recipient),
            next_index=0,
            highest=0,
            expected={},
            spent=OrderedDict(),
        )
        channel._fill()
        return channel

    def sender(self) -> SenderCertificate:
        """The certificate the channel is bound to (verified when it was opened)."""
        return SenderCertificate.from_bytes(self.certificate)

    def tags(self) -> set[bytes]:
        """Every tag this channel answers for: expected and spent."""
        return set(self._expected) | set(self._spent)

    def expects(self, tag: bytes) -> bool:
        return tag in self._expected

    def _fill(self) -> None:
        limit = min(self._highest + CHANNEL_WINDOW, CHANNEL_MAX_MESSAGES)
        while self._next < limit:
            tag, key, nonce, self._chain_key = _channel_step(self._chain_key)
            self._expected[tag] = _Expected(self._next, key, nonce)
            self._next += 1
        if len(self._expected) > 2 * CHANNEL_WINDOW:
            # The oldest skipped keys go first: their envelopes are the likeliest lost.
            by_index = sorted(self._expected.items(), key=lambda item: item[1].index)
            for tag, _ in by_index[: len(self._expected) - 2 * CHANNEL_WINDOW]:
                del self._expected[tag]

    def open(self, data: bytes) -> bytes:
        """The frame of a channel envelope. Its key is deleted and the window moves
        on only when it opens; raises ChannelReplay for a spent tag,
        UnknownChannelTag for one not expected, SealedSenderError when it does not
        authenticate and MalformedMessage when it is not a channel envelope."""
        if len(data) > _MAX_CHANNEL_ENVELOPE:
            raise MalformedMessage("the sealed envelope is too large")
        if len(data) < CHANNEL_OVERHEAD or data[0] != CHANNEL_VERSION:
            raise MalformedMessage("not a sealed channel envelope")
        header = data[: 1 + CHANNEL_TAG_LENGTH]
        tag = header[1:]
        expected = self._expected.get(tag)
        if expected is None:
            if tag in self._spent:
                raise ChannelReplay("this channel envelope was already opened")
            raise UnknownChannelTag("the channel expects no envelope with this tag")
        try:
            inner = aead_open(expected.key, expected.nonce, data[len(header) :], header)
        except CryptoError:
            raise SealedSenderError("the channel envelope does not authenticate") from None
        if len(inner) < 4:
            raise MalformedMessage("the channel envelope is truncated")
        length = int.from_bytes(inner[:4], "big")
        if length > len(inner) - 4 or length > MAX_SEALED:
            raise MalformedMessage("the channel envelope's frame length is wrong")
        if not _zero(inner[4 + length :]):
            raise MalformedMessage("the sealed envelope's padding is not zero")
        del self._expected[tag]
        self._spent[tag] = None
        while len(self._spent) > 2 * CHANNEL_WINDOW:
            self._spent.popitem(last=False)
        self._highest = max(self._highest, expected.index + 1)
        self._fill()
        return inner[4 : 4 + length]

    def to_bytes(self) -> bytes:
        writer = (
            Writer()
            .u8(CHANNEL_STATE_VERSION)
            .bytes16(self.certificate)
            .raw(self._chain_key)
            .u32(self._next)
            .u32(self._highest)
            .u16(len(self._expected))
        )
        for tag, expected in self._expected.items():
            writer.raw(tag).u32(expected.index).raw(expected.key).raw(expected.nonce)
        writer.u16(len(self._spent))
        for tag in self._spent:
            writer.raw(tag)
        return writer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> ReceiveChannel:
        reader = Reader(data, "receiving channel state")
        reader.version(CHANNEL_STATE_VERSION)
        certificate = reader.bytes16()
        chain_key = reader.raw(32)
        next_index = reader.u32()
        highest = reader.u32()
        expected: dict[bytes, _Expected] = {}
        for _ in range(reader.u16()):
            tag = reader.raw(CHANNEL_TAG_LENGTH)
            expected[tag] = _Expected(reader.u32(), reader.raw(32), reader.raw(12))
        spent: OrderedDict[bytes, None] = OrderedDict()
        for _ in range(reader.u16()):
            spent[reader.raw(CHANNEL_TAG_LENGTH)] = None
        reader.end()
        return ReceiveChannel(
            certificate,
            chain_key,
            next_index=next_index,
            highest=highest,
            expected=expected,
            spent=spent,
        )

    def __repr__(self) -> str:
        return f"ReceiveChannel({len(self._expected)} expected, <keys hidden>)"


def channel_tag(data: bytes) -> bytes:
    """The tag of a channel envelope, to find its channel."""
    if len(data) < CHANNEL_OVERHEAD or data[0] != CHANNEL_VERSION:
        raise MalformedMessage("not a sealed channel envelope")
    return data[1 : 1 + CHANNEL_TAG_LENGTH]
