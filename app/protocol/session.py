"""Sessions: PQXDH session start and the Double Ratchet behind one object.

Wire envelope (version 1):

    u8 version = 1
    u8 type        1 = prekey message (starts a session), 2 = normal message
    prekey:  u16 len + initiator identity, 32 ephemeral key, 1088 KEM ciphertext,
             u32 signed prekey id, u32 KEM prekey id, u8 has-one-time, [u32 one-time id],
             then the normal-message body below
    normal:  40-byte ratchet header, u32 len + AES-256-GCM ciphertext

PQXDH (Signal's specification, revision 3) with our identity keys:
DH1 = DH(IK_A, SPK_B), DH2 = DH(EK_A, IK_B), DH3 = DH(EK_A, SPK_B), DH4 = DH(EK_A, OPK_B)
SK  = HKDF-SHA256(salt = 32 zero bytes, ikm = 32 x 0xFF || DH1 || DH2 || DH3 [|| DH4] || SS,
                  info = PQXDH_INFO, 32)
AD  = identity encoding of the initiator || identity encoding of the responder.
Until the initiator has received a reply, each of its messages is a prekey message
(so whichever arrives first can start the session at the responder).

Replays of a session start. A prekey message that used a one-time prekey cannot
start a second session: the one-time key is deleted by the first. One that used
only the signed prekey and the last-resort KEM prekey could, for as long as those
keys live, so the responder remembers each such start (`SessionStart.digest`) and
`respond` refuses one it has seen (`PrekeyReplay`), however long ago it was. Where
the memory lives and how it is pruned is the caller's business (the store keeps it
durably; see docs/protocol.md); `respond` only asks it.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from app.crypto import (
    MLKEM768_CIPHERTEXT_LENGTH,
    CryptoError,
    DhPrivateKey,
    DhPublicKey,
    Rng,
    SystemRng,
    hkdf_sha256,
    sha256,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import (
    AuthenticationError,
    ExpiredPrekey,
    MalformedMessage,
    NoSession,
    PrekeyReplay,
    ProtocolError,
)
from app.protocol.identity import (
    FIRST_ONE_TIME_ID,
    DeviceIdentity,
    LocalPrekeys,
    PublicIdentity,
    RemoteBundle,
)
from app.protocol.ratchet import HEADER_LENGTH, RatchetState

ENVELOPE_VERSION = 1
PREKEY_MESSAGE = 1
NORMAL_MESSAGE = 2
PQXDH_INFO = b"Cipherline_PQXDH_X25519_SHA-256_ML-KEM-768"
SESSION_VERSION = 1
MAX_ENVELOPE = 256 * 1024
SESSION_START_LABEL = b"Cipherline_SessionStart_v1"


@dataclass(frozen=True)
class PrekeyInfo:
    identity: bytes
    ephemeral: bytes
    kem_ciphertext: bytes
    signed_prekey_id: int
    kem_prekey_id: int
    one_time_prekey_id: int | None

    def write(self, writer: Writer) -> None:
        writer.bytes16(self.identity).raw(self.ephemeral).raw(self.kem_ciphertext)
        writer.u32(self.signed_prekey_id).u32(self.kem_prekey_id)
        if self.one_time_prekey_id is None:
            writer.u8(0)
        else:
            writer.u8(1).u32(self.one_time_prekey_id)

    @staticmethod
    def read(reader: Reader) -> PrekeyInfo:
        identity = reader.bytes16()
        ephemeral = reader.raw(32)
        kem_ciphertext = reader.raw(MLKEM768_CIPHERTEXT_LENGTH)
        spk_id, kem_id = reader.u32(), reader.u32()
        flag = reader.u8()
        if flag not in (0, 1):
            raise MalformedMessage("bad one-time prekey flag")
        otk_id = reader.u32() if flag else None
        return PrekeyInfo(identity, ephemeral, kem_ciphertext, spk_id, kem_id, otk_id)


@dataclass(frozen=True)
class Envelope:
    kind: int
    prekey: PrekeyInfo | None
    header: bytes
    ciphertext: bytes

    def to_bytes(self) -> bytes:
        writer = Writer().u8(ENVELOPE_VERSION).u8(self.kind)
        if self.prekey is not None:
            self.prekey.write(writer)
        return writer.raw(self.header).bytes32(self.ciphertext).getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Envelope:
        if len(data) > MAX_ENVELOPE:
            raise MalformedMessage("the envelope is too large")
        reader = Reader(data, "envelope")
        reader.version(ENVELOPE_VERSION)
        kind = reader.u8()
        if kind not in (PREKEY_MESSAGE, NORMAL_MESSAGE):
            raise MalformedMessage("unknown envelope type")
        prekey = PrekeyInfo.read(reader) if kind == PREKEY_MESSAGE else None
        header = reader.raw(HEADER_LENGTH)
        ciphertext = reader.bytes32(MAX_ENVELOPE)
        reader.end()
        return Envelope(kind, prekey, header, ciphertext)


def is_prekey_message(data: bytes) -> bool:
    return len(data) >= 2 and data[0] == ENVELOPE_VERSION and data[1] == PREKEY_MESSAGE


@dataclass(frozen=True)
class SessionStart:
    """Which session start a prekey message carries, and which of our prekeys it used.

    `digest` = SHA-256("Cipherline_SessionStart_v1" || the prekey fields exactly as
    in the envelope): the initiator's identity, its ephemeral (base) key, the KEM
    ciphertext and the prekey ids. Every message of one start carries the same
    fields, so they share one digest; a different start has a fresh ephemeral key
    and KEM ciphertext, so a different digest.
    """

    digest: bytes
    signed_prekey_id: int
    kem_prekey_id: int
    one_time_prekey_id: int | None

    @staticmethod
    def of(info: PrekeyInfo) -> SessionStart:
        writer = Writer().raw(SESSION_START_LABEL)
        info.write(writer)
        return SessionStart(
            sha256(writer.getvalue()),
            info.signed_prekey_id,
            info.kem_prekey_id,
            info.one_time_prekey_id,
        )

    @staticmethod
    def of_envelope(envelope_bytes: bytes) -> SessionStart | None:
        """The start a prekey message carries; None for a normal message.
        Raises MalformedMessage for bytes that are not an envelope."""
        info = Envelope.from_bytes(envelope_bytes).prekey
        return None if info is None else SessionStart.of(info)

    def needs_memory(self, prekeys: LocalPrekeys) -> bool:
        """True when only the replay memory can stop this start from being used
        again: it used no one-time prekey, and the keys it used are still ours
        (current or retired within their grace period)."""
        return (
            self.one_time_prekey_id is None
            and self.signed_prekey_id in prekeys.held_signed_prekey_ids()
            and self.kem_prekey_id in prekeys.held_last_resort_ids()
        )


def _used_one_time_key(prekeys: LocalPrekeys, prekey_id: int) -> bool:
    """A one-time key id we handed out and have since deleted (they are deleted only
    when a session start used them, and ids are never reused). Ids of the signed and
    last-resort prekeys are never one-time ids (see the id ranges in `identity`)."""
    return (
        FIRST_ONE_TIME_ID <= prekey_id < prekeys.next_id
        and prekey_id not in prekeys.one_time
        and prekey_id not in prekeys.one_time_kem
    )


def _derive(parts: list[bytes], shared_kem: bytes) -> bytes:
    ikm = b"\xff" * 32 + b"".join(parts) + shared_kem
    return hkdf_sha256(ikm, salt=bytes(32), info=PQXDH_INFO, length=32)


class Session:
    """A pairwise session with one remote device. Serialises to bytes for the store."""

    def __init__(
        self,
        ratchet: RatchetState,
        associated_data: bytes,
        remote_identity: bytes,
        pending_prekey: PrekeyInfo | None,
    ) -> None:
        self.ratchet = ratchet
        self.associated_data = associated_data
        self.remote_identity = remote_identity
        self.pending_prekey = pending_prekey

    @property
    def remote_public_identity(self) -> PublicIdentity:
        return PublicIdentity.from_bytes(self.remote_identity)

    # ---- starting --------------------------------------------------------------
    @staticmethod
    def initiate(own: DeviceIdentity, bundle: RemoteBundle, rng: Rng | None = None) -> Session:
        rng = rng or SystemRng()
        ephemeral = DhPrivateKey.generate(rng)
        try:
            kem_ciphertext, shared_kem = bundle.kem_prekey.encapsulate()
            parts = [
                own.dh_key.exchange(bundle.signed_prekey),
                ephemeral.exchange(bundle.identity.dh_key),
                ephemeral.exchange(bundle.signed_prekey),
            ]
            if bundle.one_time_prekey is not None:
                parts.append(ephemeral.exchange(bundle.one_time_prekey))
        except CryptoError:
            raise AuthenticationError("the bundle holds an unusable key") from None
        secret = _derive(parts, shared_kem)
        own_identity = own.public.to_bytes()
        remote_identity = bundle.identity.to_bytes()
        prekey = PrekeyInfo(
            identity=own_identity,
            ephemeral=ephemeral.public_key().to_bytes(),
            kem_ciphertext=kem_ciphertext,
            signed_prekey_id=bundle.signed_prekey_id,
            kem_prekey_id=bundle.kem_prekey_id,
            one_time_prekey_id=bundle.one_time_prekey_id,
        )
        ratchet = RatchetState.init_sender(secret, bundle.signed_prekey, rng)
        return Session(ratchet, own_identity + remote_identity, remote_identity, prekey)

    @staticmethod
    def respond(
        own: DeviceIdentity,
        prekeys: LocalPrekeys,
        envelope_bytes: bytes,
        rng: Rng | None = None,
        *,
        used_starts: Container[bytes] = frozenset(),
    ) -> tuple[Session, bytes, PublicIdentity]:
        """Starts a session from a prekey message. Consumes the used one-time prekeys
        from `prekeys` only on success (the caller then stores both).

        `used_starts` holds the `SessionStart.digest` of every start already accepted
        that `needs_memory`; the caller adds this one's after a success. A start seen
        before, or one whose one-time prekeys are already used, raises PrekeyReplay;
        one naming a signed or last-resort prekey this device has deleted raises
        ExpiredPrekey. Either way nothing changes."""
        envelope = Envelope.from_bytes(envelope_bytes)
        info = envelope.prekey
        if info is None:
            raise NoSession("a normal message arrived for a session we do not have")
        if SessionStart.of(info).digest in used_starts:
            raise PrekeyReplay("this session start was already used")
        remote = PublicIdentity.from_bytes(info.identity)
        # The start may name the current signed prekey or a retired one still in its
        # grace period; one that was deleted cannot be opened any more.
        signed_prekey = prekeys.signed_prekey_for(info.signed_prekey_id)
        if signed_prekey is None and prekeys.had_signed_prekey(info.signed_prekey_id):
            raise ExpiredPrekey("the message uses a signed prekey this device has deleted")
        if signed_prekey is None:
            raise AuthenticationError("the message uses a signed prekey we do not have")
        last_resort = prekeys.last_resort_for(info.kem_prekey_id)
        if last_resort is not None:
            kem_key = last_resort
        elif info.kem_prekey_id in prekeys.one_time_kem:
            kem_key = prekeys.one_time_kem[info.kem_prekey_id]
        elif _used_one_time_key(prekeys, info.kem_prekey_id):
            raise PrekeyReplay("the message uses a one-time KEM prekey already used")
        elif prekeys.had_last_resort(info.kem_prekey_id):
            raise ExpiredPrekey("the message uses a last-resort KEM prekey this device has deleted")
        else:
            raise AuthenticationError("the message uses a KEM prekey we do not have")
        one_time: DhPrivateKey | None = None
        if info.one_time_prekey_id is not None:
            one_time = prekeys.one_time.get(info.one_time_prekey_id)
            if one_time is None and _used_one_time_key(prekeys, info.one_time_prekey_id):
                raise PrekeyReplay("the message uses a one-time prekey already used")
            if one_time is None:
                raise AuthenticationError("the message uses a one-time prekey we do not have")
        try:
            ephemeral = DhPublicKey(info.ephemeral)
            shared_kem = kem_key.decapsulate(info.kem_ciphertext)
            parts = [
                signed_prekey.exchange(remote.dh_key),
                own.dh_key.exchange(ephemeral),
                signed_prekey.exchange(ephemeral),
            ]
            if one_time is not None:
                parts.append(one_time.exchange(ephemeral))
        except CryptoError:
            raise AuthenticationError("the prekey message holds an unusable key") from None
        secret = _derive(parts, shared_kem)
        own_identity = own.public.to_bytes()
        session = Session(
            RatchetState.init_receiver(secret, signed_prekey),
            info.identity + own_identity,
            info.identity,
            None,
        )
        plaintext = session.ratchet.decrypt(
            envelope.header, envelope.ciphertext, session.associated_data, rng
        )
        if info.one_time_prekey_id is not None:
            prekeys.one_time.pop(info.one_time_prekey_id, None)
        if last_resort is None:
            prekeys.one_time_kem.pop(info.kem_prekey_id, None)
        return session, plaintext, remote

    # ---- messages --------------------------------------------------------------
    def encrypt(self, plaintext: bytes, rng: Rng | None = None) -> bytes:
        header, ciphertext = self.ratchet.encrypt(plaintext, self.associated_data, rng)
        kind = PREKEY_MESSAGE if self.pending_prekey is not None else NORMAL_MESSAGE
        return Envelope(kind, self.pending_prekey, header, ciphertext).to_bytes()

    def decrypt(self, envelope_bytes: bytes, rng: Rng | None = None) -> bytes:
        envelope = Envelope.from_bytes(envelope_bytes)
        if envelope.prekey is not None and envelope.prekey.identity != self.remote_identity:
            raise AuthenticationError("the message comes from a different identity")
        plaintext = self.ratchet.decrypt(
            envelope.header, envelope.ciphertext, self.associated_data, rng
        )
        # The peer has our session: stop attaching the session-start data.
        self.pending_prekey = None
        return plaintext

    def matches_prekey_message(self, envelope_bytes: bytes) -> bool:
        """True when a prekey message belongs to this (already started) session."""
        try:
            envelope = Envelope.from_bytes(envelope_bytes)
        except ProtocolError:
            return False
        return envelope.prekey is not None and envelope.prekey.identity == self.remote_identity

    def archived(self) -> Session:
        """A decrypt-only copy: no sending chain and no session-start data, so
        `encrypt` refuses it. For a session a restore retired (docs/protocol.md,
        "Restore"): its next message keys may already have been used by the device
        the backup came from, but it can still open late messages of the old
        session. Opening one may step the ratchet and grow a sending chain again,
        so archive the state again after every decryption."""
        ratchet = self.ratchet.copy()
        ratchet.send_chain = None
        return Session(ratchet, self.associated_data, self.remote_identity, None)

    @property
    def can_encrypt(self) -> bool:
        return self.ratchet.send_chain is not None

    # ---- persistence -----------------------------------------------------------
    def to_bytes(self) -> bytes:
        writer = (
            Writer()
            .u8(SESSION_VERSION)
            .bytes16(self.associated_data)
            .bytes16(self.remote_identity)
            .bytes32(self.ratchet.to_bytes())
        )
        if self.pending_prekey is None:
            writer.u8(0)
        else:
            writer.u8(1)
            self.pending_prekey.write(writer)
        return writer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Session:
        reader = Reader(data, "session state")
        reader.version(SESSION_VERSION)
        associated_data = reader.bytes16()
        remote_identity = reader.bytes16()
        ratchet = RatchetState.from_bytes(reader.bytes32())
        pending = PrekeyInfo.read(reader) if reader.u8() else None
        reader.end()
        return Session(ratchet, associated_data, remote_identity, pending)
