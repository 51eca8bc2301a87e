"""Our reading and writing of SQLCipher 4 pages, checked against SQLCipher itself
(an implementation we did not write): both HMACs it offers, both directions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlcipher3.dbapi2 as sqlcipher

from app.crypto import DecryptionError, SqlcipherPages

PAGE = 4096


def _database(path: Path, key: bytes, hmac: str | None) -> None:
    connection = sqlcipher.connect(str(path), isolation_level=None)
    try:
        connection.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        if hmac is not None:
            connection.execute(f"PRAGMA cipher_hmac_algorithm = {hmac}")
        connection.execute("CREATE TABLE notes (body TEXT)")
        connection.executemany(
            "INSERT INTO notes VALUES (?)", [(f"note {n} " + "x" * 200,) for n in range(400)]
        )
    finally:
        connection.close()


def _bodies(path: Path, key: bytes, hmac: str | None) -> list[str]:
    connection = sqlcipher.connect(str(path), isolation_level=None)
    try:
        connection.execute(f"PRAGMA key = \"x'{key.hex()}'\"")
        if hmac is not None:
            connection.execute(f"PRAGMA cipher_hmac_algorithm = {hmac}")
        return [row[0] for row in connection.execute("SELECT body FROM notes")]
    finally:
        connection.close()


@pytest.mark.parametrize(("hmac", "pragma"), [("sha512", None), ("sha256", "HMAC_SHA256")])
def test_pages_sqlcipher_wrote_decrypt_and_pages_we_write_open_in_sqlcipher(
    tmp_path: Path, hmac: str, pragma: str | None
) -> None:
    key, new_key = os.urandom(32), os.urandom(32)
    original = tmp_path / "original.db"
    _database(original, key, pragma)
    data = original.read_bytes()
    assert len(data) % PAGE == 0 and len(data) > 20 * PAGE
    reader = SqlcipherPages(key, data[:16], PAGE, hmac=hmac)
    assert reader.reserve == {"sha512": 80, "sha256": 48}[hmac]
    plain = [
        reader.decrypt(n + 1, data[n * PAGE : (n + 1) * PAGE]) for n in range(len(data) // PAGE)
    ]
    assert plain[0].startswith(b"SQLite format 3\x00")
    # SQLite's header: bytes reserved per page, at least what SQLCipher uses.
    assert plain[0][20] >= reader.reserve
    assert any(b"note 399 " in page for page in plain)
    writer = SqlcipherPages(new_key, os.urandom(16), PAGE, hmac=hmac)
    copy = tmp_path / "copy.db"
    copy.write_bytes(b"".join(writer.encrypt(n + 1, page) for n, page in enumerate(plain)))
    assert b"note 399" not in copy.read_bytes()
    assert _bodies(copy, new_key, pragma) == _bodies(original, key, pragma)


def test_a_changed_byte_or_a_page_in_another_place_is_refused(tmp_path: Path) -> None:
    key = os.urandom(32)
    original = tmp_path / "original.db"
    _database(original, key, None)
    data = original.read_bytes()
    pages = SqlcipherPages(key, data[:16], PAGE, hmac="sha512")
    second = bytearray(data[PAGE : 2 * PAGE])
    pages.decrypt(2, bytes(second))
    with pytest.raises(DecryptionError):
        pages.decrypt(3, bytes(second))  # the page number is under the MAC
    second[100] ^= 1
    with pytest.raises(DecryptionError):
        pages.decrypt(2, bytes(second))
    with pytest.raises(DecryptionError):
        SqlcipherPages(key, data[:16], PAGE, hmac="sha256").decrypt(2, data[PAGE : 2 * PAGE])
    with pytest.raises(ValueError, match="HMAC"):
        SqlcipherPages(key, data[:16], PAGE, hmac="sha1")
