"""Device names the relay stores but cannot read (docs/protocol.md §12).

The relay keeps a name per device only so that the account's own devices can
list each other; it has no use for the text. So the client encrypts the name
under a key derived from its identity private key, which never leaves the
device (and its backups, so a restored copy reads it too), and the relay stores
the ciphertext in the name's place. Each device has an identity of its own, so a
device added to the account under a new identity cannot read the others' names;
it lists them by number.

    stored    = "cl1:" || base64url (no padding) of nonce || AES-256-GCM(key, nonce, block, AD)
    key       = HKDF-SHA256(ikm = identity signing seed || identity DH private key,
                            salt = none, info = DEVICE_NAME_INFO, 32 bytes)
    AD        = u8 version = 1
    block     = u16 len || name (UTF-8) || zeros, BLOCK_LENGTH bytes in all

Every name fills the same block, so the stored size says nothing about the name.
The nonce is random: a key seals a handful of names in its life, far from the
birthday bound of 96-bit nonces. The username is not bound in: the key is the
identity's own, so no other account's device could have sealed under it.
"""

from __future__ import annotations

import base64

from app.crypto import (
    NONCE_LENGTH,
    DecryptionError,
    Rng,
    SystemRng,
    aead_open,
    aead_seal,
    hkdf_sha256,
)
from app.protocol.identity import DeviceIdentity

DEVICE_NAME_VERSION = 1
DEVICE_NAME_INFO = b"Cipherline_DeviceName_v1"
PREFIX = "cl1:"
ASSOCIATED_DATA = bytes([DEVICE_NAME_VERSION])
# The most a user may type: the relay's limit from when it stored names in the
# clear. 64 characters are at most 256 bytes of UTF-8, so the block always fits.
MAX_NAME_CHARACTERS = 64
BLOCK_LENGTH = 2 + 4 * MAX_NAME_CHARACTERS
# nonce || ciphertext || tag, base64url without padding, after the prefix: 386.
STORED_LENGTH = len(PREFIX) + -(-(NONCE_LENGTH + BLOCK_LENGTH + 16) * 4 // 3)


def _key(identity: DeviceIdentity) -> bytes:
    ikm = identity.signing_key.to_bytes() + identity.dh_key.to_bytes()
    return hkdf_sha256(ikm, salt=None, info=DEVICE_NAME_INFO, length=32)


def seal_device_name(identity: DeviceIdentity, name: str, rng: Rng | None = None) -> str:
    """The text to give the relay as this device's name."""
    if not name or len(name) > MAX_NAME_CHARACTERS:
        raise ValueError(f"a device name is 1 to {MAX_NAME_CHARACTERS} characters")
    encoded = name.encode("utf-8")
    block = len(encoded).to_bytes(2, "big") + encoded
    block += bytes(BLOCK_LENGTH - len(block))
    nonce = (rng or SystemRng()).random_bytes(NONCE_LENGTH)
    sealed = nonce + aead_seal(_key(identity), nonce, block, ASSOCIATED_DATA)
    return PREFIX + base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def open_device_name(identity: DeviceIdentity, stored: str) -> str | None:
    """The name a device of this account sealed, or None when it does not open
    under this device's key (another device's identity, or tampered with).

    A name without the prefix was stored in the clear by an older client and is
    returned as it is: the relay has read it already, and hiding it helps no one.
    """
    if not stored.startswith(PREFIX):
        return stored
    text = stored[len(PREFIX) :]
    try:
        sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:  # binascii.Error included
        return None
    try:
        block = aead_open(
            _key(identity), sealed[:NONCE_LENGTH], sealed[NONCE_LENGTH:], ASSOCIATED_DATA
        )
    except DecryptionError:
        return None
    length = int.from_bytes(block[:2], "big")
    if len(block) != BLOCK_LENGTH or 2 + length > BLOCK_LENGTH or any(block[2 + length :]):
        return None
    try:
        return block[2 : 2 + length].decode("utf-8")
    except UnicodeDecodeError:
        return None
