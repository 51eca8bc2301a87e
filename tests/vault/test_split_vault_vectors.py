"""tests/vectors/split_vault_v1.json (scripts/gen_split_vault_vectors.py): every
deterministic value of the split vault reproduced byte for byte from its inputs,
and the relations the protocol rests on checked on them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.crypto.oprf import (
    KeyShare,
    blind,
    combine,
    derive_key_pair,
    evaluate,
    finalize,
    reshare_contribution,
    share_evaluate,
    sum_contributions,
)
from app.protocol import vault, vault_split
from vault_emulator import state
from vault_emulator.records import Versioned

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "split_vault_v1.json").read_text()
)


def _b(text: str) -> bytes:
    return bytes.fromhex(text)


def test_the_oprf_key_its_shares_and_every_pair_give_one_output() -> None:
    oprf = VECTORS["oprf"]
    key, _public = derive_key_pair(_b(oprf["seed"]), oprf["key_info"].encode())
    assert key.hex() == oprf["key"]
    shares = [KeyShare.from_bytes(_b(share)) for share in oprf["shares"]]
    assert [share.index for share in shares] == [1, 2, 3]
    secret = VECTORS["password"].encode()
    _blind, blinded = blind(secret, blind_scalar=_b(oprf["blind"]))
    assert blinded.hex() == oprf["blinded_element"]
    evaluations = {share.index: share_evaluate(share, blinded) for share in shares}
    assert {str(i): e.hex() for i, e in evaluations.items()} == oprf["evaluations"]
    outputs = set()
    for pair, expected in oprf["combined_by_pair"].items():
        a, b = int(pair[0]), int(pair[1])
        element = combine({a: evaluations[a], b: evaluations[b]})
        assert element.hex() == expected
        outputs.add(finalize(secret, _b(oprf["blind"]), element))
    assert outputs == {_b(oprf["output"])} == {evaluate(key, secret)}


def test_the_wrapped_key_and_the_reset_keys() -> None:
    record_id, output = _b(VECTORS["record_id"]), _b(VECTORS["oprf"]["output"])
    wrap = VECTORS["wrap"]
    wrap_key = vault_split.derive_wrap_key(output, record_id)
    assert wrap_key.hex() == wrap["wrap_key"]
    wrapped = vault_split.wrap(wrap_key, record_id, _b(VECTORS["backup_key"]), _b(wrap["nonce"]))
    assert wrapped.hex() == wrap["wrapped_key"]
    assert vault_split.unwrap(wrap_key, record_id, wrapped) == _b(VECTORS["backup_key"])
    assert vault_split.unwrap(wrap_key, bytes(16), wrapped) is None  # bound to its record
    resets = vault_split.reset_keys(_b(VECTORS["backup_key"]), record_id)
    assert {str(i): k.hex() for i, k in resets.items()} == VECTORS["reset"]["reset_keys"]
    assert {str(i): vault_split.verifier(k).hex() for i, k in resets.items()} == VECTORS["reset"][
        "verifiers"
    ]


def test_a_reshare_rebuilds_the_lost_share_and_each_term_alone_is_masked() -> None:
    reshare = VECTORS["reshare_to_3"]
    shares = [KeyShare.from_bytes(_b(share)) for share in VECTORS["oprf"]["shares"]]
    mask = _b(reshare["mask"])
    first = reshare_contribution(shares[0], 3, 2, pairwise_mask=mask)
    second = reshare_contribution(shares[1], 3, 1, pairwise_mask=mask)
    assert (first.hex(), second.hex()) == (reshare["term_from_1"], reshare["term_from_2"])
    rebuilt = sum_contributions(3, [first, second])
    assert rebuilt.to_bytes().hex() == reshare["rebuilt_share"] == VECTORS["oprf"]["shares"][2]
    # Unmasked, a term is the source's share times a public coefficient: what the
    # mask keeps from the target.
    assert first != reshare_contribution(shares[0], 3, 2)


def test_a_sealed_split_record_state_opens_only_where_it_was_written() -> None:
    vector = VECTORS["record_state"]
    record_id, key = _b(VECTORS["record_id"]), _b(vector["record_key"])
    here = Versioned(_b(vector["sealed"]), vector["version_written"], vector["created"], 0)
    opened = state.open_state(key, record_id, here)
    assert opened.to_bytes().hex() == vector["plaintext"]
    assert opened.share.hex() == VECTORS["oprf"]["shares"][0]
    assert opened.key_format == vault_split.KEY_SPLIT
    assert _b(vector["plaintext"])[0] == 3  # record state version 3: a split record
    with pytest.raises(state.Tampered):
        state.open_state(key, bytes(16), here)


def test_a_split_answer_has_its_one_size() -> None:
    vector = VECTORS["response"]
    sealed = _b(vector["sealed"])
    assert len(sealed) == 12 + vault_split.RESPONSE_LENGTH + 16 == 2076
    status, left, payload = vault.open_response(
        _b(vector["response_key"]),
        vector["op"],
        (200, sealed),
        length=vault_split.RESPONSE_LENGTH,
    )
    assert (status, left, payload) == (vector["status"], vector["attempts_left"], b"")


def test_the_generator_reproduces_the_file() -> None:
    from scripts.gen_split_vault_vectors import deterministic

    assert deterministic() == VECTORS
