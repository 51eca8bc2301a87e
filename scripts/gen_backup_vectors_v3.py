"""Writes tests/vectors/backup_v3.json: a small version 3 repository with a chain
of two snapshots, from fixed inputs (docs/backup-format.md, "Version 3").

Salts come from a seeded RNG and times are fixed, so the tests rebuild every file
byte for byte, and a decoder written from the spec alone decodes them
(tests/backup/test_backup_v3_independent.py). The pages are stand-in bytes shaped
like SQLite pages (the format carries them opaquely; tests restore real ones).
`--check` compares instead of writing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from app.backup import format_v3 as v3
from app.backup.format import METHOD_KEY
from app.crypto import DeterministicRng, ReusableAead

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "backup_v3.json"
KEY = bytes(range(32))
PAGE_SIZE = 512
RESERVE = 48
CREATED = 1_800_000_000_000_000_000


def _page(number: int, fill: int) -> bytes:
    usable = PAGE_SIZE - RESERVE
    if number == 1:
        head = (
            b"SQLite format 3\x00" + PAGE_SIZE.to_bytes(2, "big") + b"\x01\x01" + bytes([RESERVE])
        )
        return head + bytes([fill]) * (usable - len(head))
    return bytes([fill]) * usable


def _pack(rng: DeterministicRng, chunks: list[bytes], created: int) -> tuple[bytes, v3.PackEntry]:
    header = v3.new_header(KEY, v3.KIND_PACK, METHOD_KEY, created_ns=created, rng=rng)
    head = header.to_bytes()
    aead = ReusableAead(header.file_key(KEY))
    id_key = v3.chunk_id_key(KEY)
    parts, blobs, offset = [head], [], len(head)
    for number, chunk in enumerate(chunks):
        chunk_id = v3.chunk_id(id_key, chunk)
        sealed = aead.seal(v3.blob_nonce(number), chunk, chunk_id)
        blobs.append(v3.BlobEntry(chunk_id, offset, len(sealed)))
        parts.append(sealed)
        offset += len(sealed)
    data = b"".join(parts)
    return data, v3.PackEntry(hashlib.sha256(data).digest(), tuple(blobs))


def build() -> dict[str, Any]:
    rng = DeterministicRng(b"cipherline backup v3 vectors")
    id_key = v3.chunk_id_key(KEY)
    files: dict[str, str] = {}
    expected = []
    known: set[bytes] = set()
    # Snapshot 1: three pages and one file in two chunks. Snapshot 2: page 2
    # changed, one file added; everything else is reused from the first.
    states = [
        ([_page(1, 1), _page(2, 2), _page(3, 3)], {"a.bin": [bytes(range(256)) * 16, b"end"]}),
        (
            [_page(1, 1), _page(2, 9), _page(3, 3)],
            {"a.bin": [bytes(range(256)) * 16, b"end"], "b/c.bin": [b"new file"]},
        ),
    ]
    folder = v3.folder_name(KEY)
    for number, (pages, attachments) in enumerate(states):
        created = CREATED + number * 1_000_000_000
        new = []
        for chunk in [*pages, *(c for chunks in attachments.values() for c in chunks)]:
            chunk_id = v3.chunk_id(id_key, chunk)
            if chunk_id not in known and chunk not in new:
                new.append(chunk)
        known.update(v3.chunk_id(id_key, chunk) for chunk in new)
        pack, entry = _pack(rng, new, created)
        files[f"{folder}/data/{entry.pack_id.hex()[:2]}/{entry.pack_id.hex()}"] = pack.hex()
        head = v3.new_header(KEY, v3.KIND_INDEX, METHOD_KEY, created_ns=created, rng=rng)
        index = v3.seal_body(KEY, head, v3.encode_index([entry]))
        files[f"{folder}/index/{hashlib.sha256(index).hexdigest()}"] = index.hex()
        snapshot = v3.Snapshot(
            schema=2,
            page_size=PAGE_SIZE,
            reserve=RESERVE,
            pages=tuple(v3.chunk_id(id_key, page) for page in pages),
            files=tuple(
                v3.FileEntry(
                    path,
                    sum(len(c) for c in chunks),
                    tuple(v3.chunk_id(id_key, c) for c in chunks),
                )
                for path, chunks in sorted(attachments.items(), key=lambda i: i[0].encode())
            ),
        )
        head = v3.new_header(
            KEY,
            v3.KIND_SNAPSHOT,
            METHOD_KEY,
            created_ns=created,
            flags=v3.FLAG_ATTACHMENTS,
            total=len(pack),
            added=len(pack) + len(index),
            rng=rng,
        )
        sealed = v3.seal_body(KEY, head, snapshot.encode())
        name = hashlib.sha256(sealed).hexdigest()
        files[f"{folder}/snapshots/{name}"] = sealed.hex()
        expected.append(
            {
                "snapshot": f"{folder}/snapshots/{name}",
                "page_size": PAGE_SIZE,
                "reserve": RESERVE,
                "database": b"".join(page + bytes(RESERVE) for page in pages).hex(),
                "files": {path: b"".join(chunks).hex() for path, chunks in attachments.items()},
            }
        )
    return {
        "description": "docs/backup-format.md, Version 3: a chain of two snapshots",
        "key": KEY.hex(),
        "files": files,
        "snapshots": expected,
    }


def main() -> int:
    fresh = build()
    if "--check" in sys.argv:
        stale = json.loads(VECTORS.read_text()) != fresh
        print("stale" if stale else "ok")
        return int(stale)
    VECTORS.write_text(json.dumps(fresh, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
