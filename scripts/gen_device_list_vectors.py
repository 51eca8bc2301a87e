"""Writes tests/vectors/device_list_v1.json from fixed seeds: an account's first
device list (made from its one device's identity, as an account from before lists
gets), and a second naming a linked device. Ed25519 signatures are deterministic,
so every byte is reproduced by tests/protocol/test_device_list.py. Our own code
made them; they pin the format. `--check` compares without writing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from app.crypto import DeterministicRng
from app.protocol.device_list import initial_device_list, sign_device_list
from app.protocol.identity import DeviceIdentity

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "device_list_v1.json"


def deterministic() -> dict[str, Any]:
    rng = DeterministicRng(b"cipherline device list vectors v1")
    account = DeviceIdentity.generate(rng)
    laptop = DeviceIdentity.generate(rng)
    first = initial_device_list(account, 1, 1_800_000_000_000)
    second = sign_device_list(
        account, 2, [(1, account.public), (2, laptop.public)], 1_800_000_100_000
    )
    return {
        "account_private": account.to_bytes().hex(),
        "account_public": account.public.to_bytes().hex(),
        "linked_device_private": laptop.to_bytes().hex(),
        "linked_device_public": laptop.public.to_bytes().hex(),
        "first": {"version": 1, "issued_at": 1_800_000_000_000, "signed": first.hex()},
        "second": {"version": 2, "issued_at": 1_800_000_100_000, "signed": second.hex()},
    }


def main() -> int:
    fresh = deterministic()
    if "--check" in sys.argv:
        return 0 if json.loads(VECTORS.read_text()) == fresh else 1
    VECTORS.write_text(json.dumps(fresh, indent=2) + "\n")
    print(f"wrote {VECTORS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
