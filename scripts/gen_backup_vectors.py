"""Writes tests/vectors/backup_v1.json: a complete small backup file from fixed inputs.

Everything is deterministic (the salt and nonce prefix come from a seeded RNG), so
the tests rebuild the file byte for byte and decode it back. `--check` compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from app.backup import format as fmt
from app.crypto import DeterministicRng

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "backup_v1.json"


def build() -> dict[str, Any]:
    rng = DeterministicRng(b"cipherline backup vectors v1")
    key = rng.random_bytes(32)
    frames = [
        fmt.record_frame("meta", b'{"counts":{"messages":1},"schema":2}'),
        fmt.record_frame("messages", b'{"body":"hello","id":1}'),
        fmt.frame(fmt.FRAME_FILE_START, b"\x00\x05a.bin" + (5000).to_bytes(8, "big")),
        fmt.frame(fmt.FRAME_FILE_DATA, bytes(range(256)) * 19 + bytes(136)),
    ]
    cases = []
    for method, record_id in ((fmt.METHOD_KEY, b""), (fmt.METHOD_PASSWORD, rng.random_bytes(16))):
        header = fmt.new_header(
            key,
            method,
            record_id=record_id,
            chunk_size=fmt.MIN_CHUNK_SIZE,
            created=1_790_000_000,
            rng=rng,
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
    return {"key": key.hex(), "frames": [f.hex() for f in frames], "cases": cases}


def main() -> int:
    fresh = build()
    if "--check" in sys.argv:
        return 0 if json.loads(VECTORS.read_text()) == fresh else 1
    VECTORS.write_text(json.dumps(fresh, indent=1) + "\n")
    print(f"wrote {VECTORS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
