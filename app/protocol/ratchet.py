"""The Double Ratchet, as in Signal's specification (revision 4), over AES-256-GCM.

- KDF_RK(rk, dh_out) = HKDF-SHA256(salt=rk, ikm=dh_out, info=RATCHET_INFO) -> rk', ck
- KDF_CK(ck) = (HMAC-SHA256(ck, 0x02) as ck', HMAC-SHA256(ck, 0x01) as mk)
- ENCRYPT(mk, pt, ad): HKDF-SHA256(salt=32 zero bytes, ikm=mk, info=MESSAGE_INFO, 44)
  gives a 32-byte AES key and a 12-byte nonce; AES-256-GCM with ad = AD || header.

Skipped message keys are kept per (ratchet key, n), at most MAX_SKIP per chain
and MAX_SKIPPED_TOTAL overall (oldest evicted first). A decryption works on a
copy of the state and commits only on success, so hostile input never changes it.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field

from app.crypto import (
    CryptoError,
    DecryptionError,
    DhPrivateKey,
    DhPublicKey,
    Rng,
    SystemRng,
    aead_open,
    aead_seal,
    hkdf_sha256,
    hmac_sha256,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import AuthenticationError, MalformedMessage, ReplayError

RATCHET_INFO = b"Cipherline_Ratchet_v1"
MESSAGE_INFO = b"Cipherline_MessageKeys_v1"
MAX_SKIP = 1000
MAX_SKIPPED_TOTAL = 2000
MAX_OLD_CHAINS = 20
STATE_VERSION = 1
HEADER_LENGTH = 32 + 4 + 4


def kdf_rk(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(dh_out, salt=root_key, info=RATCHET_INFO, length=64)
    return out[:32], out[32:]


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    return hmac_sha256(chain_key, b"\x02"), hmac_sha256(chain_key, b"\x01")


def message_key_material(message_key: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(message_key, salt=bytes(32), info=MESSAGE_INFO, length=44)
    return out[:32], out[32:]


def seal_with_message_key(message_key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    key, nonce = message_key_material(message_key)
    return aead_seal(key, nonce, plaintext, ad)


def open_with_message_key(message_key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    key, nonce = message_key_material(message_key)
    try:
        return aead_open(key, nonce, ciphertext, ad)
    except DecryptionError:
        raise AuthenticationError("the message failed authentication") from None


@dataclass(frozen=True)
class Header:
    dh: bytes
    previous_chain_length: int
    number: int

    def to_bytes(self) -> bytes:
        return Writer().raw(self.dh).u32(self.previous_chain_length).u32(self.number).getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> Header:
        reader = Reader(data, "ratchet header")
        header = Header(reader.raw(32), reader.u32(), reader.u32())
        reader.end()
        return header


@dataclass
class RatchetState:
    root_key: bytes
    dh_self: DhPrivateKey
    dh_remote: bytes | None
    send_chain: bytes | None
    recv_chain: bytes | None
    send_n: int = 0
    recv_n: int = 0
    previous_send_n: int = 0
    skipped: OrderedDict[tuple[bytes, int], bytes] = field(default_factory=OrderedDict)
    old_remote_keys: list[bytes] = field(default_factory=list)

    def __repr__(self) -> str:
        # Root, chain and skipped message keys never reach a log line.
        return (
            f"RatchetState(send {self.send_n}, receive {self.recv_n},"
            f" {len(self.skipped)} skipped, <keys hidden>)"
        )

    # ---- set-up (Signal spec 3.3) ----------------------------------------------
    @staticmethod
    def init_sender(
        shared_secret: bytes, remote_ratchet_key: DhPublicKey, rng: Rng | None = None
    ) -> RatchetState:
        dh_self = DhPrivateKey.generate(rng or SystemRng())
        try:
            root, send_chain = kdf_rk(shared_secret, dh_self.exchange(remote_ratchet_key))
        except CryptoError:
            raise AuthenticationError("the peer's ratchet key is unusable") from None
        return RatchetState(
            root_key=root,
            dh_self=dh_self,
            dh_remote=remote_ratchet_key.to_bytes(),
            send_chain=send_chain,
            recv_chain=None,
        )

    @staticmethod
    def init_receiver(shared_secret: bytes, own_ratchet_key: DhPrivateKey) -> RatchetState:
        return RatchetState(
            root_key=shared_secret,
            dh_self=own_ratchet_key,
            dh_remote=None,
            send_chain=None,
            recv_chain=None,
        )

    # ---- messages --------------------------------------------------------------
    def encrypt(self, plaintext: bytes, ad: bytes, rng: Rng | None = None) -> tuple[bytes, bytes]:
        """Returns (header bytes, ciphertext)."""
        if self.send_chain is None:
            # A receiver that has not yet got a message cannot send in this
            # construction; the session layer prevents it.
            raise ReplayError("no sending chain yet")
        self.send_chain, message_key = kdf_ck(self.send_chain)
        header = Header(
            self.dh_self.public_key().to_bytes(), self.previous_send_n, self.send_n
        ).to_bytes()
        self.send_n += 1
        return header, seal_with_message_key(message_key, plaintext, ad + header)

    def decrypt(
        self, header_bytes: bytes, ciphertext: bytes, ad: bytes, rng: Rng | None = None
    ) -> bytes:
        """Decrypts, updating this state only if the message is authentic."""
        if len(header_bytes) != HEADER_LENGTH:
            raise MalformedMessage("the ratchet header has the wrong length")
        header = Header.from_bytes(header_bytes)
        trial = self.copy()
        plaintext = trial._decrypt(header, header_bytes, ciphertext, ad, rng or SystemRng())
        self.__dict__.update(trial.__dict__)
        return plaintext

    def _decrypt(
        self, header: Header, header_bytes: bytes, ciphertext: bytes, ad: bytes, rng: Rng
    ) -> bytes:
        skipped_key = self.skipped.pop((header.dh, header.number), None)
        if skipped_key is not None:
            return open_with_message_key(skipped_key, ciphertext, ad + header_bytes)
        if header.dh in self.old_remote_keys:
            raise ReplayError("the message was already received, or its key was discarded")
        if header.dh != self.dh_remote:
            self._skip(header.previous_chain_length)
            self._dh_ratchet(header, rng)
        elif header.number < self.recv_n:
            raise ReplayError("the message was already received, or its key was discarded")
        if self.recv_chain is None:
            # Only a sender that has had no reply gets here: its "remote ratchet key"
            # is the peer's signed prekey, which the peer never sends under. So this
            # is a crafted message, not one we could ever open.
            raise AuthenticationError("the message names a ratchet key we have no chain for")
        self._skip(header.number)
        self.recv_chain, message_key = kdf_ck(self.recv_chain)
        self.recv_n += 1
        return open_with_message_key(message_key, ciphertext, ad + header_bytes)

    def _skip(self, until: int) -> None:
        # A receiving chain always has its remote key (from_bytes holds to that).
        remote = self.dh_remote
        if self.recv_chain is None or remote is None:
            return
        if until - self.recv_n > MAX_SKIP:
            raise AuthenticationError("too many skipped messages in one chain")
        while self.recv_n < until:
            self.recv_chain, message_key = kdf_ck(self.recv_chain)
            self.skipped[(remote, self.recv_n)] = message_key
            self.recv_n += 1
            while len(self.skipped) > MAX_SKIPPED_TOTAL:
                self.skipped.popitem(last=False)

    def _dh_ratchet(self, header: Header, rng: Rng) -> None:
        try:
            remote = DhPublicKey(header.dh)
            if self.dh_remote is not None:
                self.old_remote_keys.append(self.dh_remote)
                del self.old_remote_keys[:-MAX_OLD_CHAINS]
            self.previous_send_n = self.send_n
            self.send_n = 0
            self.recv_n = 0
            self.dh_remote = header.dh
            self.root_key, self.recv_chain = kdf_rk(self.root_key, self.dh_self.exchange(remote))
            self.dh_self = DhPrivateKey.generate(rng)
            self.root_key, self.send_chain = kdf_rk(self.root_key, self.dh_self.exchange(remote))
        except CryptoError:
            raise AuthenticationError("the message carries an unusable ratchet key") from None

    def copy(self) -> RatchetState:
        clone = copy.copy(self)
        clone.skipped = OrderedDict(self.skipped)
        clone.old_remote_keys = list(self.old_remote_keys)
        return clone

    # ---- persistence -----------------------------------------------------------
    def to_bytes(self) -> bytes:
        writer = (
            Writer()
            .u8(STATE_VERSION)
            .raw(self.root_key)
            .raw(self.dh_self.to_bytes())
            .bytes8(self.dh_remote or b"")
            .bytes8(self.send_chain or b"")
            .bytes8(self.recv_chain or b"")
            .u32(self.send_n)
            .u32(self.recv_n)
            .u32(self.previous_send_n)
            .u32(len(self.skipped))
        )
        for (dh, number), key in self.skipped.items():
            writer.raw(dh).u32(number).raw(key)
        writer.u8(len(self.old_remote_keys))
        for key in self.old_remote_keys:
            writer.raw(key)
        return writer.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> RatchetState:
        reader = Reader(data, "ratchet state")
        reader.version(STATE_VERSION)
        state = RatchetState(
            root_key=reader.raw(32),
            dh_self=DhPrivateKey(reader.raw(32)),
            dh_remote=reader.bytes8() or None,
            send_chain=reader.bytes8() or None,
            recv_chain=reader.bytes8() or None,
            send_n=reader.u32(),
            recv_n=reader.u32(),
            previous_send_n=reader.u32(),
        )
        for _ in range(reader.u32()):
            dh, number, key = reader.raw(32), reader.u32(), reader.raw(32)
            state.skipped[(dh, number)] = key
        state.old_remote_keys = [reader.raw(32) for _ in range(reader.u8())]
        reader.end()
        if state.recv_chain is not None and state.dh_remote is None:
            raise MalformedMessage("the ratchet state has a receiving chain without its key")
        return state
