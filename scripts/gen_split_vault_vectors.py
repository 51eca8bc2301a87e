"""Writes tests/vectors/split_vault_v1.json from fixed seeds.

Every value of the split vault (docs/vault-protocol.md, "The split vault") that
does not depend on HPKE's randomness: the OPRF key and its three shares, a blinded
password and each domain's evaluation, their combination by every pair, the
output, the wrap key, the wrapped backup key, the reset keys and verifiers, a
re-share (masked terms and their sum), a sealed split record state and a padded
answer. Our own code made them (the OPRF under them is checked against RFC 9497's
published vectors in tests/crypto/test_oprf.py); they pin the formats so that any
change is noticed, and let another implementation compare itself with ours.
Run with `--check` to compare without writing.
"""

from __future__ import annotations

import json
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

from app.crypto import DeterministicRng
from app.crypto.oprf import (
    blind,
    combine,
    derive_key_pair,
    evaluate,
    finalize,
    random_scalar,
    reshare_contribution,
    share_evaluate,
    split_key,
    sum_contributions,
)
from app.protocol import vault, vault_split
from vault_emulator import state
from vault_emulator.records import Versioned

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "split_vault_v1.json"
PASSWORD = "correct horse battery staple"


def deterministic() -> dict[str, Any]:
    rng = DeterministicRng(b"cipherline split vault vectors v1")
    record_id, backup_key, seed = rng.random_bytes(16), rng.random_bytes(32), rng.random_bytes(32)
    oprf_key, _public = derive_key_pair(seed, vault_split.KEY_INFO)
    shares = split_key(oprf_key, rng)
    secret = PASSWORD.encode()
    blinding = random_scalar(rng)
    _blinding, blinded = blind(secret, blind_scalar=blinding)
    evaluations = {share.index: share_evaluate(share, blinded) for share in shares}
    combined = {
        f"{a}{b}": combine({a: evaluations[a], b: evaluations[b]}).hex()
        for a, b in combinations(sorted(evaluations), 2)
    }
    output = finalize(secret, blinding, combine({1: evaluations[1], 2: evaluations[2]}))
    assert output == evaluate(oprf_key, secret)
    wrap_key = vault_split.derive_wrap_key(output, record_id)
    wrap_nonce = rng.random_bytes(12)
    wrapped = vault_split.wrap(wrap_key, record_id, backup_key, wrap_nonce)
    resets = vault_split.reset_keys(backup_key, record_id)
    mask = random_scalar(rng)
    terms = {
        source: reshare_contribution(shares[source - 1], 3, other, pairwise_mask=mask)
        for source, other in ((1, 2), (2, 1))
    }
    rebuilt = sum_contributions(3, [terms[1], terms[2]])
    assert rebuilt.to_bytes() == shares[2].to_bytes()
    record_key, state_nonce = rng.random_bytes(32), rng.random_bytes(12)
    record_state = state.RecordState(
        state.ACTIVE,
        generation=rng.random_bytes(16),
        stored_key=wrapped,
        key_format=vault_split.KEY_SPLIT,
        limit=vault_split.DEFAULT_SPLIT_LIMIT,
        attempts=2,
        open_tickets=(rng.random_bytes(16),),
        seen=((rng.random_bytes(16), 1_800_000_000),),
        share=shares[0].to_bytes(),
        verifier=vault_split.verifier(resets[1]),
    )
    at = Versioned(b"", version=6, created=4, revision=41)
    response_key, response_nonce = rng.random_bytes(32), rng.random_bytes(12)
    return {
        "password": PASSWORD,
        "record_id": record_id.hex(),
        "backup_key": backup_key.hex(),
        "oprf": {
            "seed": seed.hex(),
            "key_info": vault_split.KEY_INFO.decode(),
            "key": oprf_key.hex(),
            "shares": [share.to_bytes().hex() for share in shares],
            "blind": blinding.hex(),
            "blinded_element": blinded.hex(),
            "evaluations": {str(i): element.hex() for i, element in evaluations.items()},
            "combined_by_pair": combined,
            "output": output.hex(),
        },
        "wrap": {
            "wrap_key": wrap_key.hex(),
            "nonce": wrap_nonce.hex(),
            "wrapped_key": wrapped.hex(),
        },
        "reset": {
            "reset_keys": {str(i): key.hex() for i, key in resets.items()},
            "verifiers": {str(i): vault_split.verifier(key).hex() for i, key in resets.items()},
        },
        "reshare_to_3": {
            "mask": mask.hex(),
            "term_from_1": terms[1].hex(),
            "term_from_2": terms[2].hex(),
            "rebuilt_share": rebuilt.to_bytes().hex(),
        },
        "record_state": {
            "record_key": record_key.hex(),
            "created": at.created,
            "version_written": at.version + 1,
            "nonce": state_nonce.hex(),
            "plaintext": record_state.to_bytes().hex(),
            "sealed": state.seal_state(record_key, record_id, record_state, at, state_nonce).hex(),
        },
        "response": {
            "op": "split_check",
            "response_key": response_key.hex(),
            "nonce": response_nonce.hex(),
            "status": vault.OK,
            "attempts_left": 5,
            "sealed": vault.seal_response(
                response_key,
                "split_check",
                vault.OK,
                5,
                b"",
                response_nonce,
                length=vault_split.RESPONSE_LENGTH,
            ).hex(),
        },
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
