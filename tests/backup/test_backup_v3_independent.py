"""A version 3 snapshot decoded from docs/backup-format.md ("Version 3") alone.

Nothing from `app.backup` is imported to decode: the reader below uses only the
standard library and `cryptography`, follows the spec's byte tables, rebuilds the
store as a plain SQLite image in memory (never on disk) and reads the messages
with Python's own sqlite3. If the spec leaves something out, this test cannot be
written, or fails.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import struct
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.backup import format as fmt
from app.backup import snapshots
from app.store import Store
from tests.backup.conftest import SECRET_TEXT, populate
from tests.store.conftest import protector

KEY = bytes(range(32))


def hkdf(salt: bytes | None, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(KEY)


class Cursor:
    def __init__(self, data: bytes, at: int = 0) -> None:
        self.data, self.at = data, at

    def take(self, n: int) -> bytes:
        assert self.at + n <= len(self.data), "cut short"
        self.at += n
        return self.data[self.at - n : self.at]

    def u(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")


def header(data: bytes, kind: int) -> tuple[int, bytes, Cursor]:
    """Returns (header length, salt, cursor after the header)."""
    c = Cursor(data)
    assert c.take(4) == b"CLBK" and c.u(1) == 3 and c.u(1) == kind
    method, flags = c.u(1), c.u(1)
    assert method in (1, 2) and flags & ~1 == 0
    c.u(8)  # created, ns
    salt = c.take(32)
    c.take(c.u(1))  # vault record id
    commitment = c.take(32)
    assert commitment == hkdf(salt, b"Cipherline backup v3 key commitment")
    if kind == 1:
        c.u(8), c.u(8)  # total, added
    return c.at, salt, c


def open_file(path: Path, kind: int, label: bytes) -> bytes:
    data = path.read_bytes()
    length, salt, _ = header(data, kind)
    return AESGCM(hkdf(salt, label)).decrypt(bytes(12), data[length:], data[:length])


def decode(repo: Path, snapshot: Path) -> tuple[bytes, dict[str, bytes], int]:
    """The snapshot's plain database image, its files and its page size."""
    id_key = hkdf(None, b"Cipherline backup v3 chunk id key")

    # Every index: chunk id -> (pack id, blob number, offset, sealed length).
    where: dict[bytes, tuple[bytes, int, int, int]] = {}
    for path in sorted((repo / "index").iterdir()):
        c = Cursor(open_file(path, 2, b"Cipherline backup v3 index key"))
        for _ in range(c.u(4)):
            pack = c.take(32)
            for number in range(c.u(4)):
                chunk_id = c.take(32)
                where[chunk_id] = (pack, number, c.u(8), c.u(4))
        assert c.at == len(c.data)

    def chunk(chunk_id: bytes) -> bytes:
        pack, number, offset, length = where[chunk_id]
        data = (repo / "data" / pack.hex()[:2] / pack.hex()).read_bytes()
        assert hashlib.sha256(data).digest() == pack
        _length, salt, _ = header(data, 3)
        aead = AESGCM(hkdf(salt, b"Cipherline backup v3 pack key"))
        plain = aead.decrypt(number.to_bytes(12, "big"), data[offset : offset + length], chunk_id)
        assert hmac.digest(id_key, plain, "sha256") == chunk_id
        return plain

    c = Cursor(open_file(snapshot, 1, b"Cipherline backup v3 snapshot key"))
    schema, page_size, reserve = c.u(2), c.u(4), c.u(1)
    assert schema >= 1
    image = b"".join(chunk(c.take(32)) + bytes(reserve) for _ in range(c.u(4)))
    files: dict[str, bytes] = {}
    for _ in range(c.u(4)):
        name = c.take(c.u(2)).decode()
        size = c.u(8)
        files[name] = b"".join(chunk(c.take(32)) for _ in range(c.u(4)))
        assert len(files[name]) == size
    assert c.at == len(c.data)
    assert len(image) % page_size == 0
    return image, files, page_size


def folder_name() -> str:
    info = b"Cipherline backup v3 folder name"
    return "cipherline-" + HKDF(hashes.SHA256(), 8, None, info).derive(KEY).hex()


def test_the_v3_vectors_decode_from_the_spec(tmp_path: Path) -> None:
    vectors = json.loads((Path(__file__).parents[1] / "vectors" / "backup_v3.json").read_text())
    assert bytes.fromhex(vectors["key"]) == KEY
    for relative, data in vectors["files"].items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(bytes.fromhex(data))
    repo = tmp_path / folder_name()
    assert repo.is_dir()
    for expected in vectors["snapshots"]:
        image, files, page_size = decode(repo, tmp_path / expected["snapshot"])
        assert page_size == expected["page_size"]
        assert image.hex() == expected["database"]
        assert {k: v.hex() for k, v in files.items()} == expected["files"]


def test_a_stranger_decodes_a_real_v3_snapshot_chain_from_the_spec(tmp_path: Path) -> None:
    profile = tmp_path / "profile"
    store = Store.create(profile, protector())
    populate(store, profile, messages=400)
    folder = tmp_path / "cloud"
    snapshots.write_snapshot(
        store, folder, KEY, method=fmt.METHOD_KEY, attachments_dir=profile / "attachments"
    )
    with store.transaction():
        conversation = store.conversations.direct("bob", now=1)
        store.messages.add(
            conversation_id=conversation.id,
            uuid="late",
            sender="bob",
            outgoing=False,
            body="written after the first snapshot",
            sent_at=5,
            status="received",
        )
    snapshots.write_snapshot(
        store, folder, KEY, method=fmt.METHOD_KEY, attachments_dir=profile / "attachments"
    )
    store.close()

    repo = folder / folder_name()
    # The newest snapshot, by its created time (header bytes 8-15).
    paths = list((repo / "snapshots").iterdir())
    newest = max(paths, key=lambda p: struct.unpack(">Q", p.read_bytes()[8:16])[0])
    image, files, _page_size = decode(repo, newest)

    database = sqlite3.connect(":memory:")
    database.deserialize(image)
    bodies = {row[0] for row in database.execute("SELECT body FROM messages")}
    assert f"{SECRET_TEXT} #399" in bodies
    assert "written after the first snapshot" in bodies
    assert database.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert files["nested/a2.bin"] == b"small file"
    assert files["a1.bin"] == (profile / "attachments" / "a1.bin").read_bytes()
