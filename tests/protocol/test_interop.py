"""Our Double Ratchet against an implementation we did not write.

`doubleratchet` (Syndace, PyPI) is configured as our specification says:
HKDF-SHA256 root chain (salt = root key, info = RATCHET_INFO), HMAC-SHA256 message
chains (constant 0x02 for the next chain key, 0x01 for the message key), X25519,
and an AEAD written here straight from docs/protocol.md on `cryptography`
(HKDF to key + nonce, AES-256-GCM, AD = session AD || 40-byte header).
Messages must cross in both directions, through DH ratchet steps and reordering.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from doubleratchet import AEAD as LibraryAead
from doubleratchet import DoubleRatchet as LibraryDoubleRatchet
from doubleratchet import EncryptedMessage, Header
from doubleratchet.recommended import (
    HashFunction,
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)

from app.crypto import DhPrivateKey
from app.protocol.ratchet import MESSAGE_INFO, RATCHET_INFO, RatchetState
from app.protocol.ratchet import Header as OurHeader

SHARED_SECRET = bytes(range(32))
AD = b"alice identity || bob identity"


class RootKdf(kdf_hkdf.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return RATCHET_INFO


class ChainKdf(kdf_separate_hmacs.KDF):
    @staticmethod
    def _get_hash_function() -> HashFunction:
        return HashFunction.SHA_256


def _spec_aead_material(message_key: bytes) -> tuple[bytes, bytes]:
    out = HKDF(hashes.SHA256(), 44, salt=bytes(32), info=MESSAGE_INFO).derive(message_key)
    return out[:32], out[32:]


class SpecAead(LibraryAead):
    @staticmethod
    async def encrypt(plaintext: bytes, key: bytes, associated_data: bytes) -> bytes:
        aes_key, nonce = _spec_aead_material(key)
        return AESGCM(aes_key).encrypt(nonce, plaintext, associated_data)

    @staticmethod
    async def decrypt(ciphertext: bytes, key: bytes, associated_data: bytes) -> bytes:
        aes_key, nonce = _spec_aead_material(key)
        return AESGCM(aes_key).decrypt(nonce, ciphertext, associated_data)


def _header_bytes(header: Header) -> bytes:
    return (
        header.ratchet_pub
        + header.previous_sending_chain_length.to_bytes(4, "big")
        + header.sending_chain_length.to_bytes(4, "big")
    )


class LibraryRatchet(LibraryDoubleRatchet):
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: Header) -> bytes:
        return associated_data + _header_bytes(header)


CONFIG: dict[str, Any] = {
    "diffie_hellman_ratchet_class": diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet,
    "root_chain_kdf": RootKdf,
    "message_chain_kdf": ChainKdf,
    "message_chain_constant": b"\x02\x01",
    "dos_protection_threshold": 100,
    "max_num_skipped_message_keys": 1000,
    "aead": SpecAead,
}


def _to_library(header_bytes: bytes, ciphertext: bytes) -> EncryptedMessage:
    ours = OurHeader.from_bytes(header_bytes)
    return EncryptedMessage(Header(ours.dh, ours.previous_chain_length, ours.number), ciphertext)


def test_library_initiator_talks_to_our_responder() -> None:
    async def scenario() -> None:
        bob_ratchet_key = DhPrivateKey.generate()
        library_alice, first = await LibraryRatchet.encrypt_initial_message(
            **CONFIG,
            shared_secret=SHARED_SECRET,
            recipient_ratchet_pub=bob_ratchet_key.public_key().to_bytes(),
            message=b"hello from the library",
            associated_data=AD,
        )
        our_bob = RatchetState.init_receiver(SHARED_SECRET, bob_ratchet_key)
        assert our_bob.decrypt(_header_bytes(first.header), first.ciphertext, AD) == (
            b"hello from the library"
        )
        # Several rounds, each a DH ratchet step, with reordering inside a chain.
        for round_number in range(3):
            replies = [our_bob.encrypt(f"ours {round_number}.{i}".encode(), AD) for i in range(3)]
            for i in (2, 0, 1):
                header, ciphertext = replies[i]
                plaintext = await library_alice.decrypt_message(_to_library(header, ciphertext), AD)
                assert plaintext == f"ours {round_number}.{i}".encode()
            sent = [
                await library_alice.encrypt_message(f"lib {round_number}.{i}".encode(), AD)
                for i in range(3)
            ]
            for i in (1, 2, 0):
                message = sent[i]
                assert (
                    our_bob.decrypt(_header_bytes(message.header), message.ciphertext, AD)
                    == f"lib {round_number}.{i}".encode()
                )

    asyncio.run(scenario())


def test_our_initiator_talks_to_library_responder() -> None:
    async def scenario() -> None:
        bob_ratchet_key = DhPrivateKey.generate()
        our_alice = RatchetState.init_sender(SHARED_SECRET, bob_ratchet_key.public_key())
        header, ciphertext = our_alice.encrypt(b"hello from us", AD)
        library_bob, plaintext = await LibraryRatchet.decrypt_initial_message(
            **CONFIG,
            shared_secret=SHARED_SECRET,
            own_ratchet_priv=bob_ratchet_key.to_bytes(),
            message=_to_library(header, ciphertext),
            associated_data=AD,
        )
        assert plaintext == b"hello from us"
        for round_number in range(3):
            message = await library_bob.encrypt_message(f"lib {round_number}".encode(), AD)
            assert (
                our_alice.decrypt(_header_bytes(message.header), message.ciphertext, AD)
                == f"lib {round_number}".encode()
            )
            header, ciphertext = our_alice.encrypt(f"ours {round_number}".encode(), AD)
            assert (
                await library_bob.decrypt_message(_to_library(header, ciphertext), AD)
                == f"ours {round_number}".encode()
            )

    asyncio.run(scenario())
