"""Sender Keys for groups: each member encrypts a group message once and signs it.

Per (group, member) a chain: chain key CK_i, iteration i, and an Ed25519 signing
key. Message key mk = HMAC-SHA256(CK_i, SENDER_MESSAGE_LABEL), CK_{i+1} =
HMAC-SHA256(CK_i, SENDER_CHAIN_LABEL); mk expands with HKDF-SHA256 (info
SENDER_MESSAGE_INFO) into an AES-256-GCM key and nonce. The labels are the group's
own: the Double Ratchet's pairwise chains use 0x01 / 0x02 and
"Cipherline_MessageKeys_v1", so no key is ever derived for both uses
(docs/protocol.md, "KDF labels"). Version 1 shared the ratchet's labels.

Group message (version 2):
    u8 version, u16 len + group id, u32 chain id, u32 iteration,
    u32 len + ciphertext, 64-byte Ed25519 signature over everything before it.
The AEAD's associated data is the group id, chain id and iteration. The signature
proves which member sent it (the pairwise session proves who distributed the key).

Distribution message (version 2, sent over pairwise sessions):
    u8 version, u16 len + group id, u32 chain id, u32 iteration, 32 chain key,
    32 Ed25519 public key.

Stored state (version 2; version 1 is still read, its skipped keys dropped: they
were derived under the version 1 labels and could only open version 1 messages,
which are refused).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from app.crypto import (
    CryptoError,
    DecryptionError,
    Rng,
    SigningKey,
    SystemRng,
    VerifyKey,
    aead_open,
    aead_seal,
    hkdf_sha256,
    hmac_sha256,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import AuthenticationError, MalformedMessage, ReplayError

SENDER_KEY_VERSION = 2  # distribution and group messages; 1 used the ratchet's labels
STATE_VERSION = 2
LEGACY_STATE_VERSION = 1
MAX_SKIP = 1000
MAX_SKIPPED_TOTAL = 2000

# The group KDF's labels. None may equal a label of another use (the test in
# tests/protocol/test_kdf_labels.py holds every KDF label of app.protocol apart).
SENDER_CHAIN_LABEL = b"Cipherline sender key chain v2"
SENDER_MESSAGE_LABEL = b"Cipherline sender key message v2"
SENDER_MESSAGE_INFO = b"Cipherline sender key message keys v2"


def sender_kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """(next chain key, message key) of a group chain."""
    return hmac_sha256(chain_key, SENDER_CHAIN_LABEL), hmac_sha256(chain_key, SENDER_MESSAGE_LABEL)


def sender_message_key_material(message_key: bytes) -> tuple[bytes, bytes]:
    """(AES-256-GCM key, 12-byte nonce) for one group message key."""
    out = hkdf_sha256(message_key, salt=bytes(32), info=SENDER_MESSAGE_INFO, length=44)
    return out[:32], out[32:]


def _seal(message_key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    key, nonce = sender_message_key_material(message_key)
    return aead_seal(key, nonce, plaintext, ad)


def _open(message_key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    key, nonce = sender_message_key_material(message_key)
    try:
        return aead_open(key, nonce, ciphertext, ad)
    except DecryptionError:
        raise AuthenticationError("the group message failed authentication") from None


@dataclass(frozen=True)
class SenderKeyDistribution:
    group_id: bytes
    chain_id: int
    iteration: int
    chain_key: bytes
    verify_key: bytes

    def to_bytes(self) -> bytes:
        return (
            Writer()
            .u8(SENDER_KEY_VERSION)
            .bytes16(self.group_id)
            .u32(self.chain_id)
            .u32(self.iteration)
            .raw(self.chain_key)
            .raw(self.verify_key)
            .getvalue()
        )

    @staticmethod
    def from_bytes(data: bytes) -> SenderKeyDistribution:
        reader = Reader(data, "sender key distribution")
        reader.version(SENDER_KEY_VERSION)
        value = SenderKeyDistribution(
            reader.bytes16(), reader.u32(), reader.u32(), reader.raw(32), reader.raw(32)
        )
        reader.end()
        try:
            VerifyKey(value.verify_key)
        except CryptoError:
            raise MalformedMessage("the sender key's signing key is invalid") from None
        return value

    def __repr__(self) -> str:
        return (
            f"SenderKeyDistribution(chain {self.chain_id}, iteration {self.iteration},"
            " <chain key hidden>)"
        )


@dataclass
class SenderKeyState:
    """One member's chain in one group. Own state has the signing key."""

    group_id: bytes
    chain_id: int
    iteration: int
    chain_key: bytes
    verify_key: bytes
    signing_key: SigningKey | None = None
    skipped: OrderedDict[int, bytes] = field(default_factory=OrderedDict)

    @staticmethod
    def create(group_id: bytes, rng: Rng | None = None) -> SenderKeyState:
        rng = rng or SystemRng()
        signing = SigningKey.generate(rng)
        return SenderKeyState(
            group_id=group_id,
            chain_id=int.from_bytes(rng.random_bytes(4), "big"),
            iteration=0,
            chain_key=rng.random_bytes(32),
            verify_key=signing.verify_key().to_bytes(),
            signing_key=signing,
        )

    @staticmethod
    def from_distribution(message: SenderKeyDistribution) -> SenderKeyState:
        return SenderKeyState(
            group_id=message.group_id,
            chain_id=message.chain_id,
            iteration=message.iteration,
            chain_key=message.chain_key,
            verify_key=message.verify_key,
        )

    def distribution(self) -> SenderKeyDistribution:
        return SenderKeyDistribution(
            self.group_id, self.chain_id, self.iteration, self.chain_key, self.verify_key
        )

    def _ad(self, iteration: int) -> bytes:
        return Writer().bytes16(self.group_id).u32(self.chain_id).u32(iteration).getvalue()

    def encrypt(self, plaintext: bytes) -> bytes:
        if self.signing_key is None:
            raise ValueError("only the owner of a sender key can encrypt with it")
        iteration = self.iteration
        self.chain_key, message_key = sender_kdf_ck(self.chain_key)
        self.iteration += 1
        ciphertext = _seal(message_key, plaintext, self._ad(iteration))
        body = (
            Writer()
            .u8(SENDER_KEY_VERSION)
            .bytes16(self.group_id)
            .u32(self.chain_id)
            .u32(iteration)
            .bytes32(ciphertext)
            .getvalue()
        )
        return body + self.signing_key.sign(body)

    def decrypt(self, message: bytes) -> bytes:
        """Verifies the signature, then decrypts; the state changes only on success."""
        if len(message) < 64:
            raise MalformedMessage("the group message is truncated")
        body, signature = message[:-64], message[-64:]
        reader = Reader(body, "group message")
        reader.version(SENDER_KEY_VERSION)
        group_id, chain_id, iteration = reader.bytes16(), reader.u32(), reader.u32()
        ciphertext = reader.bytes32()
        reader.end()
        if group_id != self.group_id or chain_id != self.chain_id:
            raise AuthenticationError("the group message belongs to another sender key")
        try:
            VerifyKey(self.verify_key).verify(signature, body)
        except CryptoError:
            raise AuthenticationError("the group message's signature does not verify") from None
        skipped = self.skipped.get(iteration)
        if skipped is not None:
            plaintext = _open(skipped, ciphertext, self._ad(iteration))
            del self.skipped[iteration]
            return plaintext
        if iteration < self.iteration:
            raise ReplayError("the group message was already received, or its key discarded")
        if iteration - self.iteration > MAX_SKIP:
            raise AuthenticationError("too many skipped group messages")
        chain_key, current = self.chain_key, self.iteration
        new_skipped: list[tuple[int, bytes]] = []
        while current < iteration:
            chain_key, message_key = sender_kdf_ck(chain_key)
            new_skipped.append((current, message_key))
            current += 1
        chain_key, message_key = sender_kdf_ck(chain_key)
        plaintext = _open(message_key, ciphertext, self._ad(iteration))
        self.chain_key, self.iteration = chain_key, iteration + 1
        for number, key in new_skipped:
            self.skipped[number] = key
        while len(self.skipped) > MAX_SKIPPED_TOTAL:
            self.skipped.popitem(last=False)
        return plaintext

    def to_bytes(self) -> bytes:
        writer = (
            Writer()
            .u8(STATE_VERSION)
            .bytes16(self.group_id)
            .u32(self.chain_id)
            .u32(self.iteration)
            .raw(self.chain_key)
            .raw(self.verify_key)
            .bytes8(self.signing_key.to_bytes() if self.signing_key else b"")
            .u32(len(self.skipped))
        )
        for number, key in self.skipped.items():
            writer.u32(number).raw(key)
        return writer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> SenderKeyState:
        reader = Reader(data, "sender key state")
        version = reader.u8()
        if version not in (STATE_VERSION, LEGACY_STATE_VERSION):
            raise MalformedMessage(f"sender key state version {version} is not supported")
        state = SenderKeyState(
            group_id=reader.bytes16(),
            chain_id=reader.u32(),
            iteration=reader.u32(),
            chain_key=reader.raw(32),
            verify_key=reader.raw(32),
        )
        signing = reader.bytes8()
        state.signing_key = SigningKey(signing) if signing else None
        for _ in range(reader.u32()):
            number = reader.u32()
            state.skipped[number] = reader.raw(32)
        reader.end()
        if version == LEGACY_STATE_VERSION:
            state.skipped.clear()
        return state

    def __repr__(self) -> str:
        return f"SenderKeyState(chain {self.chain_id}, iteration {self.iteration})"


def group_message_chain(message: bytes) -> tuple[bytes, int]:
    """(group id, chain id) of a group message, to find the state that opens it."""
    reader = Reader(message, "group message")
    reader.version(SENDER_KEY_VERSION)
    return reader.bytes16(), reader.u32()
