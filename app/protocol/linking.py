"""Linking a new device to an existing account (docs/protocol.md §14), sans-I/O.

The new device N opens a relay mailbox under an ephemeral X25519 key and shows it
as a QR code (the key itself) or a short code (the mailbox id and a 60-bit
commitment to the key). The existing device E answers with an ephemeral key of its
own; both derive one AES-256-GCM key per direction and a six-digit confirmation
code the user compares on the two screens. N sends a `DeviceHello`; E, once the
user approved, sends a `Provision` (the account identity, the new device list,
the synchronised state) or a `LinkRefusal`.

The relay only carries bytes. A relay that puts its own key in place of E's is
seen in the codes (they differ) and learns nothing E sends; one that puts its own
key in place of N's must beat the QR code (impossible) or the commitment (a 2^60
second-preimage search for that one mailbox within its life).

    chunk = u8 format (1) | u8 direction | u32 index | AES-256-GCM(key_dir, nonce, piece, AD)
    nonce = 8 zero bytes || u32 index
    AD    = "Cipherline link v1" || u8 direction || u32 index
    piece = u8 last (0 more follow, 1 the message ends here) || up to MAX_PIECE_LENGTH bytes
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from app.crypto import (
    TAG_LENGTH,
    X25519_KEY_LENGTH,
    AeadKey,
    CryptoError,
    DecryptionError,
    DhPrivateKey,
    DhPublicKey,
    ReusableAead,
    Rng,
    constant_time_equal,
    hkdf_sha256,
    sha256,
)
from app.protocol.device_list import DeviceList, DeviceListError, open_device_list
from app.protocol.device_names import MAX_NAME_CHARACTERS
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import (
    AuthenticationError,
    MalformedMessage,
    ProtocolError,
    ReplayError,
)
from app.protocol.identity import DeviceIdentity, PublicIdentity

# ---- constants (docs/protocol.md §14) ---------------------------------------------

LINK_VERSION = 1
QR_PREFIX = "cipherline-link"
LINK_INFO = b"Cipherline link v1"
CONFIRMATION_INFO = b"Cipherline link confirmation v1"
COMMITMENT_CONTEXT = b"Cipherline link commitment v1"
# The AD prefix spells the key label on purpose (the brief's format); AD feeds
# AES-GCM, not a derivation, so no key is shared with the HKDF output.
ASSOCIATED_DATA_PREFIX = b"Cipherline link v1"

BASE32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
MAILBOX_ID_LENGTH = 8
COMMITMENT_LENGTH = 12  # base32 characters: 60 bits
SHORT_CODE_LENGTH = MAILBOX_ID_LENGTH + COMMITMENT_LENGTH
SHORT_CODE_GROUP = 4
# Digits people type for letters base32 leaves out; mapping them cannot weaken the
# check, since the result must still match the commitment.
_CONFUSABLE = str.maketrans({"0": "O", "1": "I", "8": "B"})
_KEY_TEXT_LENGTH = 43  # base64url of 32 bytes without padding
_BASE64URL = re.compile(r"[A-Za-z0-9_-]{43}")

CONFIRMATION_DIGITS = 6

CHUNK_FORMAT = 1
HEADER_LENGTH = 6  # u8 format | u8 direction | u32 index
MAX_CHUNK_LENGTH = 64 * 1024  # what one relay mailbox message takes
MAX_PIECE_LENGTH = MAX_CHUNK_LENGTH - HEADER_LENGTH - TAG_LENGTH - 1
MIN_CHUNK_LENGTH = HEADER_LENGTH + TAG_LENGTH + 1
MAX_INDEX = 0xFFFF_FFFF
# A bound on what a peer can make the other side hold in memory: a sync state of a
# few MiB fits many times over.
MAX_MESSAGE_LENGTH = 32 * 1024 * 1024
MAX_SYNC_STATE_LENGTH = 30 * 1024 * 1024
MAX_REASON_LENGTH = 1024  # UTF-8 bytes of a refusal's reason

_MORE, _LAST = 0, 1

HELLO_TYPE, PROVISION_TYPE, REFUSAL_TYPE = 1, 2, 3
HELLO_VERSION = 1
PROVISION_VERSION = 1
REFUSAL_VERSION = 1


class Direction(IntEnum):
    NEW_TO_EXISTING = 1
    EXISTING_TO_NEW = 2


# ---- errors -------------------------------------------------------------------------


class LinkError(ProtocolError):
    """Base of every error linking raises on input it cannot accept."""


class LinkCodeError(LinkError):
    """A link code (QR text or short code) that cannot be used. The message is a
    sentence to show the user as it is."""


class LinkCommitmentError(LinkCodeError):
    """The key the relay gave for the mailbox does not match the code: a typo in
    the code, or a relay offering its own key."""


class LinkAuthenticationError(LinkError, AuthenticationError):
    """A chunk that does not open under this link's key (altered, cut, sealed under
    another key or for the other direction), or a peer key that is not usable."""


class LinkOrderError(LinkError):
    """A chunk whose index is not the next one expected: one before it is missing."""


class LinkReplayError(LinkOrderError, ReplayError):
    """A chunk whose index was already opened: a replay or a duplicate delivery."""


class LinkTruncatedError(LinkError):
    """The chunks ended before the message did."""


class LinkFormatError(LinkError, MalformedMessage):
    """A chunk or message that is not well formed."""


class LinkVersionError(LinkFormatError):
    """A chunk or message of a version this app does not know (a newer app made it)."""


class LinkProvisionError(LinkError):
    """A provision that does not make this device a member of the account: its
    account identity is unusable, or its device list does not name this device."""


class LinkStateError(LinkError):
    """A step taken out of turn (or after the link ended)."""


# ---- codes ----------------------------------------------------------------------------


def commitment(mailbox_id: str, public_key: bytes) -> str:
    """The 12 base32 characters (60 bits) of the short code that commit to N's key.

    The mailbox id is hashed in beside the key so that a relay searching for a
    second preimage attacks one mailbox at a time, not every live one at once."""
    digest = sha256(COMMITMENT_CONTEXT + mailbox_id.encode("ascii") + public_key)
    # Base32 is big-endian in its bits: the first 12 characters are the first 60 bits.
    return base64.b32encode(digest).decode("ascii")[:COMMITMENT_LENGTH]


def _is_base32(text: str) -> bool:
    return all(character in BASE32_ALPHABET for character in text)


def _mailbox_id(text: str) -> str:
    if len(text) != MAILBOX_ID_LENGTH or not _is_base32(text):
        raise LinkCodeError("The relay gave a mailbox id that is not 8 base32 characters.")
    return text


def _group(text: str) -> str:
    return "-".join(text[i : i + SHORT_CODE_GROUP] for i in range(0, len(text), SHORT_CODE_GROUP))


@dataclass(frozen=True)
class ShortCode:
    """A short code as typed: the mailbox id and the commitment to N's key."""

    mailbox_id: str
    commitment: str

    def matches(self, public_key: bytes) -> bool:
        """Whether `public_key` (what the relay holds for the mailbox) is the key
        the code commits to."""
        if len(public_key) != X25519_KEY_LENGTH:
            return False
        expected = commitment(self.mailbox_id, public_key)
        return constant_time_equal(expected.encode("ascii"), self.commitment.encode("ascii"))

    def text(self) -> str:
        """The code as shown: five groups of four characters joined by dashes."""
        return _group(self.mailbox_id + self.commitment)


@dataclass(frozen=True)
class LinkInvite:
    """What the new device shows: its mailbox and its ephemeral public key."""

    mailbox_id: str
    # Public (the relay holds it too), but records in app.protocol show no bytes.
    public_key: bytes = field(repr=False)

    def qr_text(self) -> str:
        key = base64.urlsafe_b64encode(self.public_key).rstrip(b"=").decode("ascii")
        return f"{QR_PREFIX}:{LINK_VERSION}:{self.mailbox_id}:{key}"

    def short_code(self) -> str:
        return self.to_short_code().text()

    def to_short_code(self) -> ShortCode:
        return ShortCode(self.mailbox_id, commitment(self.mailbox_id, self.public_key))


def parse_link_code(text: str) -> LinkInvite | ShortCode:
    """A QR text or a short code, whichever `text` is. Case, spaces and (in a short
    code) dashes do not matter; anything else wrong raises `LinkCodeError` with a
    sentence for the user."""
    compact = "".join(text.split())
    if not compact:
        raise LinkCodeError("Enter the link code shown on the new device.")
    if ":" in compact:
        return _parse_qr_text(compact)
    return _parse_short_code(compact)


def _parse_qr_text(text: str) -> LinkInvite:
    parts = text.split(":")
    if parts[0].lower() != QR_PREFIX or len(parts) < 2 or not parts[1].isdecimal():
        raise LinkCodeError("This is not a Cipherline link code.")
    if int(parts[1]) != LINK_VERSION:
        raise LinkCodeError(
            "This link code comes from another version of Cipherline; update Cipherline"
            " on both devices and start again."
        )
    damaged = "This link code is incomplete or damaged; scan it again."
    if len(parts) != 4:
        raise LinkCodeError(damaged)
    mailbox_id, key_text = parts[2].upper(), parts[3]
    if len(mailbox_id) != MAILBOX_ID_LENGTH or not _is_base32(mailbox_id):
        raise LinkCodeError(damaged)
    if len(key_text) != _KEY_TEXT_LENGTH or not _BASE64URL.fullmatch(key_text):
        raise LinkCodeError(damaged)
    try:
        public_key = base64.urlsafe_b64decode(key_text + "=")
    except (binascii.Error, ValueError):
        raise LinkCodeError(damaged) from None
    # 43 characters carry 258 bits: the last two must be zero for one text per key.
    if base64.urlsafe_b64encode(public_key).rstrip(b"=").decode("ascii") != key_text:
        raise LinkCodeError(damaged)
    return LinkInvite(mailbox_id, public_key)


def _parse_short_code(text: str) -> ShortCode:
    code = text.replace("-", "").upper().translate(_CONFUSABLE)
    for character in code:
        if character not in BASE32_ALPHABET:
            raise LinkCodeError(
                "A link code has only the letters A to Z and the digits 2 to 7;"
                f' "{character}" is not one of them.'
            )
    if len(code) != SHORT_CODE_LENGTH:
        raise LinkCodeError(
            f"A link code has {SHORT_CODE_LENGTH} letters and digits; this one has"
            f" {len(code)}. Check that you typed all of it, and nothing more."
        )
    return ShortCode(code[:MAILBOX_ID_LENGTH], code[MAILBOX_ID_LENGTH:])


# ---- key schedule ---------------------------------------------------------------------


class LinkKeys:
    """One AES-256-GCM key per direction and the confirmation code."""

    __slots__ = ("confirmation_code", "existing_to_new", "new_to_existing")

    def __init__(
        self, new_to_existing: AeadKey, existing_to_new: AeadKey, confirmation_code: str
    ) -> None:
        self.new_to_existing = new_to_existing
        self.existing_to_new = existing_to_new
        self.confirmation_code = confirmation_code

    def __repr__(self) -> str:
        return "LinkKeys(<keys hidden>)"


def format_confirmation_code(material: bytes) -> str:
    """Six decimal digits as "123 456" from 8 bytes of HKDF output. The modulo bias
    is below 2^-44: no code is measurably likelier than another."""
    number = int.from_bytes(material, "big") % 10**CONFIRMATION_DIGITS
    digits = f"{number:0{CONFIRMATION_DIGITS}d}"
    return f"{digits[:3]} {digits[3:]}"


def derive_link_keys(
    private_key: DhPrivateKey,
    peer_public_key: bytes,
    *,
    new_public_key: bytes,
    existing_public_key: bytes,
) -> LinkKeys:
    """The link keys from one side's ephemeral private key and the other's public
    key; both public keys salt the derivation, so a substituted key changes all."""
    if len(peer_public_key) != X25519_KEY_LENGTH:
        raise LinkFormatError("a link public key is 32 bytes")
    try:
        shared = private_key.exchange(DhPublicKey(peer_public_key))
    except CryptoError:
        raise LinkAuthenticationError("the other device's key is not usable") from None
    salt = new_public_key + existing_public_key
    okm = hkdf_sha256(shared, salt=salt, info=LINK_INFO, length=64)
    # Same extract (ikm, salt), its own expand label: the code says nothing of the keys.
    code = hkdf_sha256(shared, salt=salt, info=CONFIRMATION_INFO, length=8)
    return LinkKeys(AeadKey(okm[:32]), AeadKey(okm[32:]), format_confirmation_code(code))


# ---- chunks ---------------------------------------------------------------------------


def _nonce(index: int) -> bytes:
    return bytes(8) + index.to_bytes(4, "big")


def _associated_data(direction: Direction, index: int) -> bytes:
    return ASSOCIATED_DATA_PREFIX + bytes([direction]) + index.to_bytes(4, "big")


def _seal(aead: ReusableAead, direction: Direction, first_index: int, body: bytes) -> list[bytes]:
    count = max(1, -(-len(body) // MAX_PIECE_LENGTH))
    if first_index < 0 or first_index + count - 1 > MAX_INDEX:
        raise LinkStateError("no chunk indexes are left on this link")
    if len(body) > MAX_MESSAGE_LENGTH:
        raise ValueError(f"a link message is at most {MAX_MESSAGE_LENGTH} bytes")
    chunks = []
    for number in range(count):
        index = first_index + number
        piece = body[number * MAX_PIECE_LENGTH : (number + 1) * MAX_PIECE_LENGTH]
        flag = _LAST if number == count - 1 else _MORE
        header = bytes([CHUNK_FORMAT, direction]) + index.to_bytes(4, "big")
        sealed = aead.seal(_nonce(index), bytes([flag]) + piece, _associated_data(direction, index))
        chunks.append(header + sealed)
    return chunks


def seal_chunks(key: AeadKey, direction: Direction, first_index: int, body: bytes) -> list[bytes]:
    """`body` as chunks of at most MAX_CHUNK_LENGTH bytes, indexed from
    `first_index` (the number of chunks already sent in this direction)."""
    return _seal(ReusableAead(key), direction, first_index, body)


class Sealer:
    """One direction's sending side: counts the chunk index across messages."""

    __slots__ = ("_aead", "direction", "next_index")

    def __init__(self, key: AeadKey, direction: Direction) -> None:
        self._aead: ReusableAead | None = ReusableAead(key)
        self.direction = direction
        self.next_index = 0

    def seal(self, body: bytes) -> list[bytes]:
        if self._aead is None:
            raise LinkStateError("this side of the link is closed")
        chunks = _seal(self._aead, self.direction, self.next_index, body)
        self.next_index += len(chunks)
        return chunks

    def close(self) -> None:
        # Python cannot wipe the key: dropping the cipher lets it be freed now.
        self._aead = None

    def __repr__(self) -> str:
        return f"Sealer({self.direction.name}, next {self.next_index}, <key hidden>)"


class Opener:
    """One direction's receiving side: takes chunks in order and returns each
    message's body when its last chunk has opened. A chunk it refuses changes
    nothing, so a duplicate or a forgery from the relay does not end the link."""

    __slots__ = ("_aead", "_length", "_pieces", "direction", "next_index")

    def __init__(self, key: AeadKey, direction: Direction, next_index: int = 0) -> None:
        self._aead: ReusableAead | None = ReusableAead(key)
        self.direction = direction
        self.next_index = next_index
        self._pieces: list[bytes] = []
        self._length = 0

    @property
    def pending(self) -> bool:
        """Whether a message has begun and not ended."""
        return bool(self._pieces)

    def add(self, chunk: bytes) -> bytes | None:
        if self._aead is None:
            raise LinkStateError("this side of the link is closed")
        if len(chunk) < MIN_CHUNK_LENGTH or len(chunk) > MAX_CHUNK_LENGTH:
            raise LinkFormatError("a link chunk has the wrong length")
        if chunk[0] != CHUNK_FORMAT:
            raise LinkVersionError(f"link chunk format {chunk[0]} is not supported")
        if chunk[1] != self.direction:
            raise LinkAuthenticationError("a link chunk for the other direction")
        index = int.from_bytes(chunk[2:HEADER_LENGTH], "big")
        if index < self.next_index:
            raise LinkReplayError(f"link chunk {index} was already opened")
        if index > self.next_index:
            raise LinkOrderError(f"link chunk {index} came before chunk {self.next_index}")
        try:
            piece = self._aead.open(
                _nonce(index), chunk[HEADER_LENGTH:], _associated_data(self.direction, index)
            )
        except DecryptionError:
            raise LinkAuthenticationError("a link chunk failed authentication") from None
        flag, data = piece[0], piece[1:]
        if flag not in (_MORE, _LAST):
            raise LinkFormatError("a link chunk has an unknown flag")
        if self._length + len(data) > MAX_MESSAGE_LENGTH:
            raise LinkFormatError("a link message is too long")
        self.next_index += 1
        self._pieces.append(data)
        self._length += len(data)
        if flag == _MORE:
            return None
        body = b"".join(self._pieces)
        self._pieces, self._length = [], 0
        return body

    def close(self) -> None:
        self._aead = None
        self._pieces, self._length = [], 0

    def __repr__(self) -> str:
        return f"Opener({self.direction.name}, next {self.next_index}, <key hidden>)"


# ---- messages -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceHello:
    """N → E: the new device's name and public identity (for the device list)."""

    device_name: str
    # A public identity; hidden only because records in app.protocol show no bytes.
    device_identity: bytes = field(repr=False)

    def identity(self) -> PublicIdentity:
        return PublicIdentity.from_bytes(self.device_identity)

    def to_bytes(self) -> bytes:
        if not 1 <= len(self.device_name) <= MAX_NAME_CHARACTERS:
            raise ValueError(f"a device name is 1 to {MAX_NAME_CHARACTERS} characters")
        PublicIdentity.from_bytes(self.device_identity)  # refuses what E could not list
        return (
            Writer()
            .u8(HELLO_TYPE)
            .u8(HELLO_VERSION)
            .text16(self.device_name)
            .bytes16(self.device_identity)
            .getvalue()
        )


@dataclass(frozen=True)
class Provision:
    """E → N: everything the new device needs to join the account."""

    username: str
    device_id: int  # the id the relay gave N (E registered it)
    relay_token: str = field(repr=False)
    account_identity: bytes = field(repr=False)  # DeviceIdentity encoding: private
    device_list: bytes = field(repr=False)  # the signed list naming N
    sync_state: bytes = field(repr=False)  # opaque to this layer; filled by services
    history_offer: bool = False
    version: int = PROVISION_VERSION

    def account(self) -> DeviceIdentity:
        return DeviceIdentity.from_bytes(self.account_identity)

    def to_bytes(self) -> bytes:
        if self.version != PROVISION_VERSION:
            raise ValueError(f"only provision version {PROVISION_VERSION} can be made")
        if not self.username or not self.relay_token:
            raise ValueError("a provision names a username and a relay token")
        if not 1 <= self.device_id <= MAX_INDEX:
            raise ValueError("a device id is 1 to 2^32 - 1")
        if len(self.sync_state) > MAX_SYNC_STATE_LENGTH:
            raise ValueError(f"a sync state is at most {MAX_SYNC_STATE_LENGTH} bytes")
        return (
            Writer()
            .u8(PROVISION_TYPE)
            .u8(self.version)
            .text16(self.username)
            .u32(self.device_id)
            .text16(self.relay_token)
            .bytes16(self.account_identity)
            .bytes16(self.device_list)
            .u8(1 if self.history_offer else 0)
            .bytes32(self.sync_state)
            .getvalue()
        )


@dataclass(frozen=True)
class LinkRefusal:
    """E → N: the user declined (or the codes differed)."""

    reason: str

    def to_bytes(self) -> bytes:
        if len(self.reason.encode("utf-8")) > MAX_REASON_LENGTH:
            raise ValueError(f"a refusal's reason is at most {MAX_REASON_LENGTH} bytes")
        return Writer().u8(REFUSAL_TYPE).u8(REFUSAL_VERSION).text16(self.reason).getvalue()


LinkMessage = DeviceHello | Provision | LinkRefusal


def parse_link_message(body: bytes) -> LinkMessage:
    """A message body (what an `Opener` returns)."""
    try:
        reader = Reader(body, "link message")
        kind, version = reader.u8(), reader.u8()
        message: LinkMessage
        if kind == HELLO_TYPE:
            _version(version, HELLO_VERSION, "hello")
            message = DeviceHello(reader.text16(), reader.bytes16())
            PublicIdentity.from_bytes(message.device_identity)
        elif kind == PROVISION_TYPE:
            _version(version, PROVISION_VERSION, "provision")
            username, device_id, token = reader.text16(), reader.u32(), reader.text16()
            account, device_list = reader.bytes16(), reader.bytes16()
            offer = reader.u8()
            if offer not in (0, 1):
                raise LinkFormatError("the provision's history offer is not 0 or 1")
            sync_state = reader.bytes32(limit=MAX_SYNC_STATE_LENGTH)
            message = Provision(
                username, device_id, token, account, device_list, sync_state, offer == 1, version
            )
        elif kind == REFUSAL_TYPE:
            _version(version, REFUSAL_VERSION, "refusal")
            message = LinkRefusal(reader.text16())
        else:
            raise LinkFormatError(f"link message type {kind} is unknown")
        reader.end()
    except LinkError:
        raise
    except ProtocolError as error:  # MalformedMessage, BundleError from the identity
        raise LinkFormatError(f"the link message is malformed: {error}") from None
    return message


def _version(found: int, expected: int, what: str) -> None:
    if found != expected:
        raise LinkVersionError(
            f"{what} version {found} is not supported; update Cipherline on this device"
        )


def verify_provision(provision: Provision, device_identity: bytes) -> DeviceList:
    """The provision's device list, opened under its account identity, if it names
    `device_identity` (the new device's, as its hello gave it) under the provision's
    device id; `LinkProvisionError` otherwise."""
    try:
        account = provision.account()
    except (ProtocolError, CryptoError):
        raise LinkProvisionError("the provision's account identity is malformed") from None
    try:
        listed = open_device_list(provision.device_list, account.public)
    except DeviceListError as error:
        raise LinkProvisionError(f"the provision's device list is refused: {error}") from None
    identity = listed.identity_of(provision.device_id)
    if identity is None or not constant_time_equal(identity.to_bytes(), device_identity):
        raise LinkProvisionError("the provision's device list does not name this device")
    return listed


# ---- the two sides ----------------------------------------------------------------


class NewDeviceLink:
    """The new device's side: `invite` (show it), `respond` when E's key arrives
    (send the chunks, show the code), then `receive` E's chunks until a
    `Provision` or `LinkRefusal` comes back. Each instance links once."""

    __slots__ = ("_code", "_identity", "_opener", "_private_key", "_public_key")

    def __init__(self, rng: Rng | None = None) -> None:
        self._private_key: DhPrivateKey | None = DhPrivateKey.generate(rng)
        self._public_key = self._private_key.public_key().to_bytes()
        self._opener: Opener | None = None
        self._code: str | None = None
        self._identity: bytes | None = None

    @property
    def public_key(self) -> bytes:
        """pk_N: what the relay's mailbox is opened with."""
        return self._public_key

    def invite(self, mailbox_id: str) -> LinkInvite:
        """The QR text and short code to show, once the relay gave the mailbox id."""
        return LinkInvite(_mailbox_id(mailbox_id), self._public_key)

    @property
    def confirmation_code(self) -> str:
        if self._code is None:
            raise LinkStateError("the existing device's key has not arrived")
        return self._code

    def respond(self, existing_public_key: bytes, hello: DeviceHello) -> tuple[list[bytes], str]:
        """Takes pk_E from the mailbox: the hello's chunks to post, and the code to
        show. A key that is not usable changes nothing."""
        if self._private_key is None:
            raise LinkStateError("this link has already answered an existing device")
        body = hello.to_bytes()
        keys = derive_link_keys(
            self._private_key,
            existing_public_key,
            new_public_key=self._public_key,
            existing_public_key=existing_public_key,
        )
        self._private_key = None  # ephemeral: not needed once the keys exist
        chunks = seal_chunks(keys.new_to_existing, Direction.NEW_TO_EXISTING, 0, body)
        self._opener = Opener(keys.existing_to_new, Direction.EXISTING_TO_NEW)
        self._identity = hello.device_identity
        self._code = keys.confirmation_code
        return chunks, keys.confirmation_code

    def receive(self, chunk: bytes) -> Provision | LinkRefusal | None:
        """One chunk from E, in order: None until a message is complete. A
        provision is returned only if its device list names this device."""
        if self._opener is None or self._identity is None:
            raise LinkStateError("this link is not waiting for the existing device")
        body = self._opener.add(chunk)
        if body is None:
            return None
        # Authenticated from here on: whatever comes of it, the link is over.
        identity = self._identity
        self.close()
        message = parse_link_message(body)
        if isinstance(message, DeviceHello):
            raise LinkFormatError("the existing device sent a hello")
        if isinstance(message, Provision):
            verify_provision(message, identity)
        return message

    def open_provision(self, chunks: Iterable[bytes]) -> Provision | LinkRefusal:
        """All of E's chunks at once: the provision or refusal they make up."""
        pending = list(chunks)
        for position, chunk in enumerate(pending):
            message = self.receive(chunk)
            if message is not None:
                if position != len(pending) - 1:
                    raise LinkFormatError("chunks follow the end of the message")
                return message
        raise LinkTruncatedError("the existing device's message ended early")

    def close(self) -> None:
        """Drops every key this side holds (done on its own when the link ends)."""
        self._private_key = None
        if self._opener is not None:
            self._opener.close()
        self._opener = None
        self._identity = None

    def __repr__(self) -> str:
        state = (
            "waiting for the existing device"
            if self._private_key is not None
            else "waiting for the provision"
            if self._opener is not None
            else "closed"
        )
        return f"NewDeviceLink({state}, <keys hidden>)"


class ExistingDeviceLink:
    """The existing device's side: `start` with the scanned or typed code (post
    the key it returns), `receive_hello` until N's hello opens, show the code; then
    `provision` or `refuse`. Each instance links once."""

    __slots__ = (
        "_code",
        "_hello",
        "_mailbox_id",
        "_opener",
        "_private_key",
        "_public_key",
        "_sealer",
    )

    def __init__(self, rng: Rng | None = None) -> None:
        self._private_key: DhPrivateKey | None = DhPrivateKey.generate(rng)
        self._public_key = self._private_key.public_key().to_bytes()
        self._opener: Opener | None = None
        self._sealer: Sealer | None = None
        self._code: str | None = None
        self._mailbox_id: str | None = None
        self._hello: DeviceHello | None = None

    @property
    def public_key(self) -> bytes:
        """pk_E: what `start` returns, to post to the mailbox in the clear."""
        return self._public_key

    @property
    def mailbox_id(self) -> str:
        if self._mailbox_id is None:
            raise LinkStateError("the link has not started")
        return self._mailbox_id

    @property
    def confirmation_code(self) -> str:
        if self._code is None:
            raise LinkStateError("the link has not started")
        return self._code

    @property
    def hello(self) -> DeviceHello | None:
        return self._hello

    def start(self, code: LinkInvite | ShortCode, mailbox_key: bytes | None = None) -> bytes:
        """Derives the link keys with N's key and returns pk_E to post. A short
        code needs `mailbox_key`, the key the relay gave for its mailbox, which
        must match the code's commitment (`LinkCommitmentError` otherwise)."""
        if self._private_key is None:
            raise LinkStateError("this link has already started")
        if isinstance(code, ShortCode):
            if mailbox_key is None:
                raise ValueError("a short code needs the key the relay holds for its mailbox")
            if not code.matches(mailbox_key):
                raise LinkCommitmentError(
                    "The code does not match the new device. Check that you typed it as"
                    " shown; if it still does not match, start linking again on the new"
                    " device."
                )
            new_public_key = mailbox_key
        else:
            if mailbox_key is not None and not constant_time_equal(mailbox_key, code.public_key):
                raise LinkCommitmentError(
                    "The relay holds another key than the code shows; start linking again"
                    " on the new device."
                )
            new_public_key = code.public_key
        try:
            keys = derive_link_keys(
                self._private_key,
                new_public_key,
                new_public_key=new_public_key,
                existing_public_key=self._public_key,
            )
        except LinkAuthenticationError:
            raise LinkCodeError(
                "This link code does not hold a usable key; start linking again on the new device."
            ) from None
        self._private_key = None
        self._mailbox_id = code.mailbox_id
        self._opener = Opener(keys.new_to_existing, Direction.NEW_TO_EXISTING)
        self._sealer = Sealer(keys.existing_to_new, Direction.EXISTING_TO_NEW)
        self._code = keys.confirmation_code
        return self._public_key

    def receive_hello(self, chunk: bytes) -> DeviceHello | None:
        """One chunk from N, in order: None until the hello is complete."""
        if self._opener is None:
            raise LinkStateError("this link is not waiting for a hello")
        body = self._opener.add(chunk)
        if body is None:
            return None
        self._opener.close()  # N sends nothing after its hello
        self._opener = None
        message = parse_link_message(body)
        if not isinstance(message, DeviceHello):
            self.close()
            raise LinkFormatError("the new device sent something other than a hello")
        self._hello = message
        return message

    def open_hello(self, chunks: Iterable[bytes]) -> DeviceHello:
        """All of N's chunks at once: the hello they make up."""
        pending = list(chunks)
        for position, chunk in enumerate(pending):
            hello = self.receive_hello(chunk)
            if hello is not None:
                if position != len(pending) - 1:
                    raise LinkFormatError("chunks follow the end of the hello")
                return hello
        raise LinkTruncatedError("the new device's hello ended early")

    def provision(self, provision: Provision) -> list[bytes]:
        """The provision's chunks to post, once the user approved; ends the link.
        Its device list must name the hello's identity under its device id
        (`ValueError` otherwise: a bug here, not an attack)."""
        if self._sealer is None or self._hello is None:
            raise LinkStateError("the new device's hello has not been opened")
        try:
            verify_provision(provision, self._hello.device_identity)
        except LinkProvisionError as error:
            raise ValueError(str(error)) from None
        chunks = self._sealer.seal(provision.to_bytes())
        self.close()
        return chunks

    def refuse(self, reason: str) -> list[bytes]:
        """A refusal's chunks to post (the user declined or the codes differed);
        ends the link."""
        if self._sealer is None:
            raise LinkStateError("the link has not started or has ended")
        chunks = self._sealer.seal(LinkRefusal(reason).to_bytes())
        self.close()
        return chunks

    def close(self) -> None:
        """Drops every key this side holds (done on its own when the link ends)."""
        self._private_key = None
        for side in (self._opener, self._sealer):
            if side is not None:
                side.close()
        self._opener = None
        self._sealer = None

    def __repr__(self) -> str:
        if self._private_key is not None:
            state = "not started"
        elif self._sealer is None:
            state = "closed"
        elif self._hello is None:
            state = "waiting for the hello"
        else:
            state = "waiting for the user"
        return f"ExistingDeviceLink({state}, <keys hidden>)"
