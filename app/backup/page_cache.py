"""What the last version 3 backup made of each page of the store's own file.

SQLCipher writes every page under a fresh IV and MACs it, so the IV and the first
16 bytes of the MAC at the end of a page (its "mark") change whenever the page
does. The next backup reads the file raw, compares each page's mark with the one
remembered here, and reuses the chunk id of every page whose mark is unchanged
(if the folder still holds that chunk); only the pages that changed are decrypted
and hashed. That is what makes the next backup cost the pages it changed rather
than the whole store.

The file lives in the profile folder, never in the backup folder, sealed with
AES-256-GCM under a key derived from the backup key: without that key it is
noise, and a cache from another backup key (a new folder, a changed key) simply
fails to open and is ignored. Damage of any kind means an empty cache, never an
error: the worst a lost cache costs is one backup that decrypts every page.

    nonce (12) || AES-256-GCM( salt (16) || page size (u32) || count (u32)
                               || count x (mark (32) || chunk id (32)) )

with the associated data `MAGIC`; page n's entry is the n-th, an all-zero entry
means "unknown".
"""

from __future__ import annotations

import struct
from pathlib import Path

from app.crypto import AeadKey, DecryptionError, ReusableAead, hkdf_sha256, random_bytes
from app.store.durability import write_atomically

CACHE_NAME = "backup-pages.cache"
MAGIC = b"cipherline backup page cache v1"
MARK_LENGTH = 32
CHUNK_ID_LENGTH = 32
_ENTRY = MARK_LENGTH + CHUNK_ID_LENGTH
_HEAD = struct.Struct(">16sII")
_NONCE = 12
_EMPTY = bytes(_ENTRY)


def _aead(backup_key: bytes) -> ReusableAead:
    return ReusableAead(AeadKey(hkdf_sha256(backup_key, salt=None, info=MAGIC, length=32)))


class PageCache:
    """Page number (from 1) -> (mark, chunk id) for one store file (its salt and
    page size) and one backup key."""

    def __init__(self, salt: bytes, page_size: int) -> None:
        self.salt = salt
        self.page_size = page_size
        self._entries: list[bytes] = []

    @classmethod
    def load(cls, path: Path, backup_key: bytes, salt: bytes, page_size: int) -> PageCache:
        cache = cls(salt, page_size)
        try:
            sealed = path.read_bytes()
            body = _aead(backup_key).open(sealed[:_NONCE], sealed[_NONCE:], MAGIC)
            stored_salt, stored_size, count = _HEAD.unpack_from(body)
        except (OSError, DecryptionError, ValueError, struct.error):
            return cache
        entries = body[_HEAD.size :]
        if stored_salt != salt or stored_size != page_size or len(entries) != count * _ENTRY:
            return cache
        cache._entries = [entries[at : at + _ENTRY] for at in range(0, len(entries), _ENTRY)]
        return cache

    def chunk_for(self, number: int, mark: bytes) -> bytes | None:
        """The chunk id page `number` had when it bore `mark`, if remembered."""
        if number > len(self._entries):
            return None
        entry = self._entries[number - 1]
        if entry == _EMPTY or entry[:MARK_LENGTH] != mark:
            return None
        return entry[MARK_LENGTH:]

    def remember(self, number: int, mark: bytes, chunk_id: bytes) -> None:
        if len(mark) != MARK_LENGTH or len(chunk_id) != CHUNK_ID_LENGTH:
            raise ValueError("a page cache entry is a 32-byte mark and a 32-byte chunk id")
        missing = number - len(self._entries)
        if missing > 0:
            self._entries.extend([_EMPTY] * missing)
        self._entries[number - 1] = mark + chunk_id

    def truncate(self, pages: int) -> None:
        del self._entries[pages:]

    def save(self, path: Path, backup_key: bytes) -> None:
        body = _HEAD.pack(self.salt, self.page_size, len(self._entries)) + b"".join(self._entries)
        nonce = random_bytes(_NONCE)
        write_atomically(path, nonce + _aead(backup_key).seal(nonce, body, MAGIC))
