"""Writes tests/vectors/history_v1.json from fixed inputs (docs/protocol.md §14,
"History transfer").

Three records (a direct chat's reply with reactions, a group's notice, an
attachment pointer with a thumbnail) as a version 1 batch, compressed with zlib
level 1, then encrypted as an attachment (§9) with the key and nonce prefix from
DeterministicRng(b"history chunk v1"); and the type 20 content announcing it.
These vectors detect change only: our own code made them. zlib's output may
differ between zlib builds, so the zlib version is recorded beside it (the test
then checks that it inflates to the same batch). Run with `--check` to compare
without writing.
"""

from __future__ import annotations

import io
import json
import sys
import zlib
from pathlib import Path
from typing import Any

from app.crypto import DeterministicRng
from app.protocol.attachments import encrypt_attachment
from app.protocol.content import HistoryChunk, encode_content
from app.services.history import (
    HistoryAttachment,
    HistoryRecord,
    compress,
    encode_records,
)

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "history_v1.json"
SEED = b"history chunk v1"
TRANSFER_ID = bytes(range(16))
BLOB_ID = "0123456789abcdef0123456789abcdef"


def records() -> list[HistoryRecord]:
    return [
        HistoryRecord(
            peer="bob",
            group_id=None,
            uuid="5f1c7d1e-0000-4000-8000-000000000001",
            sender="alice",
            outgoing=True,
            kind="text",
            body="Meet at the harbour ⚓",
            sent_at=1_700_000_000_000,
            received_at=None,
            status="read",
            expires_at=None,
            edited_at=1_700_000_060_000,
            quote=("5f1c7d1e-0000-4000-8000-000000000000", "bob", "Where?"),
            reactions='{"bob":["👍",1700000001000]}',
        ),
        HistoryRecord(
            peer=None,
            group_id=bytes.fromhex("aa" * 16),
            uuid="5f1c7d1e-0000-4000-8000-000000000002",
            sender="alice",
            outgoing=False,
            kind="system",
            body="alice created the group",
            sent_at=1_700_000_100_000,
            received_at=1_700_000_100_000,
            status="received",
            expires_at=1_800_000_000_000,
        ),
        HistoryRecord(
            peer="bob",
            group_id=None,
            uuid="5f1c7d1e-0000-4000-8000-000000000003",
            sender="bob",
            outgoing=False,
            kind="attachment",
            body="harbour.jpg",
            sent_at=1_700_000_200_000,
            received_at=1_700_000_200_500,
            status="read",
            attachment=HistoryAttachment(
                filename="harbour.jpg",
                mime="image/jpeg",
                size=123_456,
                blob_id="fedcba9876543210fedcba9876543210",
                key=bytes([0x11]) * 32,
                digest=bytes([0x22]) * 32,
                caption="at dusk",
                thumbnail=b"\xff\xd8\xff\xe0 thumbnail bytes",
                thumbnail_width=256,
                thumbnail_height=171,
            ),
        ),
    ]


def deterministic() -> dict[str, Any]:
    plaintext = encode_records(records())
    compressed = compress(plaintext)
    target = io.BytesIO()
    secret = encrypt_attachment(io.BytesIO(compressed), target, DeterministicRng(SEED))
    announcement = HistoryChunk(
        transfer_id=TRANSFER_ID,
        index=0,
        last=True,
        messages=3,
        total=3,
        blob_id=BLOB_ID,
        key=secret.key,
        digest=secret.digest,
        size=secret.size,
    )
    return {
        "description": (
            "History transfer chunk (docs/protocol.md §14, 'History transfer'): a version 1"
            " record batch, zlib level 1, encrypted as an attachment (§9) under the key and"
            " nonce prefix DeterministicRng(b'history chunk v1') draws (32 then 7 bytes);"
            " then the type 20 content announcing it. Written by"
            " scripts/gen_history_vectors.py; change-detecting."
        ),
        "zlib_version": zlib.ZLIB_RUNTIME_VERSION,
        "records": [
            {"uuid": r.uuid, "kind": r.kind, "body": r.body, "sent_at": r.sent_at}
            for r in records()
        ],
        "plaintext": plaintext.hex(),
        "compressed": compressed.hex(),
        "key": secret.key.hex(),
        "encrypted": target.getvalue().hex(),
        "digest": secret.digest.hex(),
        "size": secret.size,
        "content": encode_content(announcement).hex(),
    }


def main() -> int:
    vectors = deterministic()
    text = json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"
    if "--check" in sys.argv[1:]:
        if VECTORS.read_text(encoding="utf-8") != text:
            print(f"{VECTORS} differs from what the code produces", file=sys.stderr)
            return 1
        print(f"{VECTORS} matches")
        return 0
    VECTORS.write_text(text, encoding="utf-8")
    print(f"wrote {VECTORS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
