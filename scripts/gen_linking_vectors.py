"""Writes tests/vectors/linking_v1.json from fixed seeds (docs/protocol.md §14).

Both ephemeral private keys, the account identity and the new device's identity
come from DeterministicRng(b"cipherline linking vectors v1"); AES-GCM with counter
nonces and Ed25519 are deterministic, so tests/protocol/test_linking.py reproduces
every byte. Our own code made these values (they detect change); the test also
re-derives the key schedule with the standard library and opens the chunks with
plain `cryptography`, from §14 alone. `--check` compares without writing.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.crypto import DeterministicRng, DhPrivateKey, DhPublicKey
from app.protocol.device_list import sign_device_list
from app.protocol.identity import DeviceIdentity
from app.protocol.linking import (
    DeviceHello,
    ExistingDeviceLink,
    NewDeviceLink,
    Provision,
    derive_link_keys,
)

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "linking_v1.json"
SEED = b"cipherline linking vectors v1"
MAILBOX_ID = "K7QMZ2XA"
ISSUED_AT = 1_800_000_000_000
# A sync state large enough to take three chunks, generated rather than stored.
LARGE_SYNC_STATE_SEED = b"cipherline linking vectors v1 sync state"
LARGE_SYNC_STATE_LENGTH = 150_000


class FixedRng:
    """Hands out the one private key a link side draws."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def random_bytes(self, length: int) -> bytes:
        assert length == len(self._value)
        return self._value


def large_sync_state() -> bytes:
    return hashlib.shake_256(LARGE_SYNC_STATE_SEED).digest(LARGE_SYNC_STATE_LENGTH)


def _sides(new_private: bytes, existing_private: bytes) -> tuple[NewDeviceLink, ExistingDeviceLink]:
    return NewDeviceLink(FixedRng(new_private)), ExistingDeviceLink(FixedRng(existing_private))


def deterministic() -> dict[str, Any]:
    rng = DeterministicRng(SEED)
    new_private, existing_private = rng.random_bytes(32), rng.random_bytes(32)
    account = DeviceIdentity.generate(rng)
    new_identity = DeviceIdentity.generate(rng)
    new_public = DhPrivateKey(new_private).public_key().to_bytes()
    existing_public = DhPrivateKey(existing_private).public_key().to_bytes()
    shared = DhPrivateKey(new_private).exchange(DhPublicKey(existing_public))
    keys = derive_link_keys(
        DhPrivateKey(new_private),
        existing_public,
        new_public_key=new_public,
        existing_public_key=existing_public,
    )

    hello = DeviceHello("Laptop", new_identity.public.to_bytes())
    device_list = sign_device_list(
        account, 2, [(1, account.public), (2, new_identity.public)], ISSUED_AT
    )

    def provision(sync_state: bytes) -> Provision:
        return Provision(
            username="alice",
            device_id=2,
            relay_token="relay-token-for-the-new-device",
            account_identity=account.to_bytes(),
            device_list=device_list,
            sync_state=sync_state,
            history_offer=True,
        )

    def linked(answer: Callable[[ExistingDeviceLink], list[bytes]]) -> list[list[bytes]]:
        """A whole link from the fixed keys: N's hello chunks, then E's answer."""
        new, existing = _sides(new_private, existing_private)
        existing.start(new.invite(MAILBOX_ID))
        hello_chunks, code = new.respond(existing.public_key, hello)
        existing.open_hello(hello_chunks)
        assert code == existing.confirmation_code == keys.confirmation_code
        return [hello_chunks, answer(existing)]

    small = provision(b"contacts, groups, settings")
    hello_chunks, provision_chunks = linked(lambda e: e.provision(small))
    refusal_chunks = linked(lambda e: e.refuse("The codes did not match."))[1]
    large_chunks = linked(lambda e: e.provision(provision(large_sync_state())))[1]
    invite = NewDeviceLink(FixedRng(new_private)).invite(MAILBOX_ID)
    return {
        "description": (
            "Cipherline device linking v1 (docs/protocol.md section 14). Hex strings;"
            " made by scripts/gen_linking_vectors.py: they detect change, our code made them."
        ),
        "new_private": new_private.hex(),
        "new_public": new_public.hex(),
        "existing_private": existing_private.hex(),
        "existing_public": existing_public.hex(),
        "mailbox_id": MAILBOX_ID,
        "qr_text": invite.qr_text(),
        "short_code": invite.short_code(),
        "shared_secret": shared.hex(),
        "salt": (new_public + existing_public).hex(),
        "key_new_to_existing": keys.new_to_existing.raw.hex(),
        "key_existing_to_new": keys.existing_to_new.raw.hex(),
        "confirmation_code": keys.confirmation_code,
        "hello": {
            "device_name": hello.device_name,
            "device_identity": hello.device_identity.hex(),
            "body": hello.to_bytes().hex(),
            "chunks": [chunk.hex() for chunk in hello_chunks],
        },
        "provision": {
            "username": small.username,
            "device_id": small.device_id,
            "relay_token": small.relay_token,
            "account_identity": small.account_identity.hex(),
            "account_public": account.public.to_bytes().hex(),
            "device_list": small.device_list.hex(),
            "sync_state": small.sync_state.hex(),
            "history_offer": small.history_offer,
            "version": small.version,
            "body": small.to_bytes().hex(),
            "chunks": [chunk.hex() for chunk in provision_chunks],
        },
        "refusal": {
            "reason": "The codes did not match.",
            "chunks": [chunk.hex() for chunk in refusal_chunks],
        },
        "large_provision": {
            "sync_state": (
                f"SHAKE-256({LARGE_SYNC_STATE_SEED.decode()!r}), {LARGE_SYNC_STATE_LENGTH}"
                " bytes; otherwise as 'provision'"
            ),
            "chunk_lengths": [len(chunk) for chunk in large_chunks],
            "chunk_sha256": [hashlib.sha256(chunk).hexdigest() for chunk in large_chunks],
        },
    }


def main() -> int:
    fresh = json.dumps(deterministic(), indent=2) + "\n"
    if "--check" in sys.argv:
        return 0 if VECTORS.read_text() == fresh else 1
    VECTORS.write_text(fresh)
    print(f"wrote {VECTORS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
