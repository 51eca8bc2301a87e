"""Writes tests/vectors/device_names_v1.json from fixed seeds (docs/protocol.md §12).

The identity comes from DeterministicRng(b"device name identity") and each
name's nonce from DeterministicRng(b"device name nonce <i>"), so every value is
reproduced byte for byte by tests/protocol/test_device_names.py. These vectors
detect change only: our own code made them. Each case records the derived key,
the padded block and the stored text, so another implementation can compare
each step. Run with `--check` to compare without writing.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from app.crypto import NONCE_LENGTH, DeterministicRng, hkdf_sha256
from app.protocol.device_names import (
    ASSOCIATED_DATA,
    BLOCK_LENGTH,
    DEVICE_NAME_INFO,
    PREFIX,
    seal_device_name,
)
from app.protocol.identity import DeviceIdentity

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "device_names_v1.json"
# ASCII, multi-byte UTF-8, and the longest name (64 four-byte characters: the
# block holds 2 + 256 bytes, no padding left).
NAMES = ("Laptop", "Küche ☕", "\U0001f4bb" * 64)


def identity() -> DeviceIdentity:
    return DeviceIdentity.generate(DeterministicRng(b"device name identity"))


def deterministic() -> dict[str, Any]:
    device = identity()
    signing_seed, dh_private = device.signing_key.to_bytes(), device.dh_key.to_bytes()
    # The key as §12 states it, not through the module's own helper.
    key = hkdf_sha256(signing_seed + dh_private, salt=None, info=DEVICE_NAME_INFO, length=32)
    cases = []
    for index, name in enumerate(NAMES):
        rng = DeterministicRng(b"device name nonce %d" % index)
        stored = seal_device_name(device, name, rng)
        text = stored[len(PREFIX) :]
        sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        encoded = name.encode("utf-8")
        block = len(encoded).to_bytes(2, "big") + encoded
        block += bytes(BLOCK_LENGTH - len(block))
        cases.append(
            {
                "name": name,
                "block": block.hex(),
                "nonce": sealed[:NONCE_LENGTH].hex(),
                "stored": stored,
            }
        )
    return {
        "description": (
            "Device names v1 (docs/protocol.md §12), made by "
            "scripts/gen_device_name_vectors.py: identity from "
            'DeviceIdentity.generate(DeterministicRng(b"device name identity")), the '
            'nonce of case i from DeterministicRng(b"device name nonce <i>").'
        ),
        "info": DEVICE_NAME_INFO.decode("ascii"),
        "associated_data": ASSOCIATED_DATA.hex(),
        "identity_signing_seed": signing_seed.hex(),
        "identity_dh_private_key": dh_private.hex(),
        "key": key.hex(),
        "cases": cases,
    }


def main() -> int:
    fresh = deterministic()
    if "--check" in sys.argv:
        return 0 if json.loads(VECTORS.read_text()) == fresh else 1
    VECTORS.write_text(json.dumps(fresh, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {VECTORS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
