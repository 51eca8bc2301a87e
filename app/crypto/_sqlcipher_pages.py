"""SQLCipher 4 pages under a raw key, read and written outside SQLCipher.

A version 3 backup deduplicates the store page by page, which needs the same
plaintext page to give the same bytes every time. SQLCipher's files cannot give
that (every page write draws a fresh IV), and this SQLCipher build has no
`sqlite_dbpage` table, so the backup decrypts the pages of its own scratch image
(made under a random raw key with `cipher_compatibility = 4` and
`cipher_hmac_algorithm = HMAC_SHA256`, see `app.store.database._connect_image`) in
memory, and a restore encrypts pages back into such an image for SQLCipher to open
(and authenticate again). The next backup reads the store's own file the same way
(SQLCipher 4's defaults, HMAC-SHA512), and decrypts only the pages whose IV and
MAC changed since the last one. This is SQLCipher's documented page format, not
a cipher of ours:

- page 1 begins with the 16-byte file salt; every page ends with a reserve of
  IV (16) || HMAC, rounded up to 16 bytes: 48 for HMAC-SHA256, 80 for
  HMAC-SHA512;
- AES-256-CBC without padding over the page from offset 16 (page 1) or 0 up to
  the reserve, under the raw key;
- the HMAC over ciphertext || IV || page number (u32 little-endian), under
  PBKDF2-HMAC-SHA512(raw key, salt XOR 0x3a, 2 iterations, 32 bytes).

Plaintext pages exist only in memory.
"""

from __future__ import annotations

import hashlib
import hmac as _stdlib_hmac
import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ._errors import DecryptionError, InvalidKey

SQLCIPHER_SALT_LENGTH = 16
SQLCIPHER_RESERVE = 48  # IV 16 + HMAC-SHA256 32: the least reserve a page keeps
SQLITE_HEADER = b"SQLite format 3\x00"
_IV = 16
_MAC_LENGTHS = {"sha256": 32, "sha512": 64}


class SqlcipherPages:
    """Decrypts and encrypts the pages of one SQLCipher 4 file under a raw key;
    `hmac` is "sha256" (our scratch images) or "sha512" (SQLCipher 4's default)."""

    __slots__ = (
        "_aes",
        "_hmac",
        "_mac_base",
        "_mac_key",
        "_mac_length",
        "page_size",
        "reserve",
        "salt",
    )

    def __init__(
        self, raw_key: bytes, salt: bytes, page_size: int, *, hmac: str = "sha256"
    ) -> None:
        if hmac not in _MAC_LENGTHS:
            raise ValueError(f"SQLCipher pages use HMAC-SHA256 or HMAC-SHA512, not {hmac}")
        if len(raw_key) != 32:
            raise InvalidKey("an SQLCipher raw key is 32 bytes")
        if len(salt) != SQLCIPHER_SALT_LENGTH:
            raise InvalidKey("an SQLCipher salt is 16 bytes")
        self._aes = algorithms.AES(raw_key)
        mac_salt = bytes(b ^ 0x3A for b in salt)
        self._mac_key = hashlib.pbkdf2_hmac("sha512", raw_key, mac_salt, 2, 32)
        # Keyed once; each page's MAC starts from a copy (no key schedule per page).
        self._mac_base = _stdlib_hmac.new(self._mac_key, digestmod=hmac)
        self.page_size = page_size
        self.salt = salt
        self._hmac = hmac
        self._mac_length = _MAC_LENGTHS[hmac]
        self.reserve = -(-(_IV + self._mac_length) // 16) * 16

    def __repr__(self) -> str:
        return f"SqlcipherPages(page_size={self.page_size}, <key hidden>)"

    def decrypt(self, number: int, page: bytes | memoryview) -> bytes:
        """Page `number` (from 1) as SQLite wrote it; the reserve comes back as zeros."""
        head = SQLITE_HEADER if number == 1 else b""
        return head + self.decrypt_body(number, page) + bytes(self.reserve)

    def decrypt_body(self, number: int, page: bytes | memoryview) -> bytes:
        """The encrypted part of page `number` in plaintext: the page without its
        reserve (and, for page 1, without the salt where SQLite's header goes).
        A backup's page chunks are exactly this for every page but the first."""
        size = self.page_size
        if len(page) != size:
            raise DecryptionError("an SQLCipher page has the wrong length")
        start = SQLCIPHER_SALT_LENGTH if number == 1 else 0
        end = size - self.reserve
        with memoryview(page) as view:
            mac = self._mac_base.copy()
            mac.update(view[start : end + _IV])
            mac.update(number.to_bytes(4, "little"))
            if not _stdlib_hmac.compare_digest(
                mac.digest(), view[end + _IV : end + _IV + self._mac_length]
            ):
                raise DecryptionError("an SQLCipher page failed authentication")
            decryptor = Cipher(self._aes, modes.CBC(view[end : end + _IV])).decryptor()
            return decryptor.update(view[start:end]) + decryptor.finalize()

    def encrypt(self, number: int, plain: bytes | memoryview) -> bytes:
        """Page `number` (from 1) as SQLCipher stores it, under a fresh random IV."""
        size = self.page_size
        if len(plain) != size:
            raise ValueError("a page to encrypt has the wrong length")
        start = SQLCIPHER_SALT_LENGTH if number == 1 else 0
        end = size - self.reserve
        iv = os.urandom(_IV)
        encryptor = Cipher(self._aes, modes.CBC(iv)).encryptor()
        body = encryptor.update(plain[start:end]) + encryptor.finalize() + iv
        mac = _stdlib_hmac.digest(self._mac_key, body + number.to_bytes(4, "little"), self._hmac)
        head = self.salt if number == 1 else b""
        return head + body + mac + bytes(self.reserve - _IV - self._mac_length)
