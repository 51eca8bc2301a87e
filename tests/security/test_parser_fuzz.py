"""Hypothesis over every parser of untrusted bytes: only its own errors come out.

Random bytes, and valid inputs with random damage, for each target in
`tests/security/parsers.py`. `scripts/fuzz_parsers.py` runs the same targets
under atheris for as long as one likes.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.security.parsers import TARGETS, Target

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_raise_only_the_parsers_own_errors(target: Target, data: bytes) -> None:
    with contextlib.suppress(target.allowed):
        target.parse(data)


@pytest.mark.parametrize("target", [t for t in TARGETS if t.sample], ids=lambda t: t.name)
@FUZZ
@given(
    position=st.integers(0, 1 << 16), noise=st.binary(min_size=1, max_size=16), cut=st.booleans()
)
def test_damaged_valid_inputs_raise_only_the_parsers_own_errors(
    target: Target, position: int, noise: bytes, cut: bool
) -> None:
    sample = bytearray(target.sample)
    position %= len(sample)
    if cut:
        del sample[position:]
    else:
        sample[position : position + len(noise)] = noise
    with contextlib.suppress(target.allowed):
        target.parse(bytes(sample))


def test_samples_are_valid() -> None:
    for target in TARGETS:
        if target.sample and target.name not in {"vault sealed request", "backup file"}:
            target.parse(target.sample)


def test_the_atheris_script_fuzzes_every_target() -> None:
    from scripts.fuzz_parsers import TARGET_NAMES

    assert [t.name for t in TARGETS] == TARGET_NAMES


def test_atheris_finding_key_file_with_infinite_costs_is_refused_cleanly() -> None:
    from app.store.errors import StoreCorrupt
    from app.store.keyfile import KeyFile

    for cost in ("6e385", "1.5", "true", "-1", "0"):
        text = (
            '{"version": 1, "method": "passphrase", "nonce": "", "wrapped_key": "",'
            f' "kdf": {{"name": "argon2id", "time_cost": 3, "memory_cost_kib": {cost},'
            ' "parallelism": 1, "salt": ""}}'
        )
        with pytest.raises(StoreCorrupt, match="KDF parameters are damaged"):
            KeyFile.from_json(text)
