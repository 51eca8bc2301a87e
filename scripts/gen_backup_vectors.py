"""Writes tests/vectors/backup_v1.json and backup_v2.json: complete small backup
files from fixed inputs.

Everything is deterministic (the salt and nonce prefix come from a seeded RNG), so
the tests rebuild the file byte for byte and decode it back. `--check` compares.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from app.backup import format as fmt
from app.crypto import DeterministicRng

VECTOR_DIR = Path(__file__).resolve().parent.parent / "tests" / "vectors"
VECTORS = VECTOR_DIR / "backup_v1.json"
VECTORS_BY_VERSION = {1: VECTORS, 2: VECTOR_DIR / "backup_v2.json"}


def _frames(version: int, rng: DeterministicRng) -> list[bytes]:
    content = bytes(range(256)) * 19 + bytes(136)
    attachment = [
        fmt.frame(fmt.FRAME_FILE_START, b"\x00\x05a.bin" + (5000).to_bytes(8, "big")),
        fmt.frame(fmt.FRAME_FILE_DATA, content),
    ]
    if version == 1:
        # Every version 1 writer ended each file with its SHA-256; a reader refuses
        # a file without its end frame (docs/backup-format.md).
        return [
            fmt.record_frame("meta", b'{"counts":{"messages":1},"schema":2}'),
            fmt.record_frame("messages", b'{"body":"hello","id":1}'),
            *attachment,
            fmt.frame(fmt.FRAME_FILE_END, hashlib.sha256(content).digest()),
        ]
    # Stand-in image bytes: the format carries pages opaquely (tests restore real ones).
    image = bytes(range(256)) * 32
    entry = fmt.DatabaseImage(schema=2, page_size=4096, size=len(image), key=rng.random_bytes(32))
    return [
        *attachment,
        fmt.frame(fmt.FRAME_FILE_END, b""),
        entry.to_frame(),
        fmt.frame(fmt.FRAME_DATABASE_DATA, image[:4096]),
        fmt.frame(fmt.FRAME_DATABASE_DATA, image[4096:]),
        fmt.frame(fmt.FRAME_DATABASE_END, b""),
    ]


def build(version: int = 1) -> dict[str, Any]:
    rng = DeterministicRng(f"cipherline backup vectors v{version}".encode())
    key = rng.random_bytes(32)
    frames = _frames(version, rng)
    cases = []
    for method, record_id in ((fmt.METHOD_KEY, b""), (fmt.METHOD_PASSWORD, rng.random_bytes(16))):
        header = fmt.new_header(
            key,
            method,
            record_id=record_id,
            chunk_size=fmt.MIN_CHUNK_SIZE,
            created=1_790_000_000,
            rng=rng,
            version=version,
        )
        encoder = fmt.BackupEncoder(key, header)
        data = encoder.start()
        for item in frames:
            data += b"".join(encoder.write(item))
        data += encoder.finish()
        cases.append(
            {
                "method": method,
                "record_id": record_id.hex(),
                "header": header.to_bytes().hex(),
                "commitment": header.commitment.hex(),
                "file": data.hex(),
            }
        )
    return {
        "version": version,
        "key": key.hex(),
        "frames": [f.hex() for f in frames],
        "cases": cases,
    }


def main() -> int:
    stale = 0
    for version, path in VECTORS_BY_VERSION.items():
        fresh = build(version)
        if "--check" in sys.argv:
            stale += json.loads(path.read_text()) != fresh
            continue
        path.write_text(json.dumps(fresh, indent=1) + "\n")
        print(f"wrote {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
