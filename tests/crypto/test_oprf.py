"""app.crypto.oprf: RFC 9497 vectors, the 2-of-3 threshold key, and every refusal."""

from __future__ import annotations

import pytest

from app.crypto import DeterministicRng
from app.crypto.oprf import (
    GROUP_ORDER,
    KEY_SHARE_LENGTH,
    MAX_INPUT_LENGTH,
    KeyShare,
    OprfError,
    blind,
    blind_evaluate,
    combine,
    derive_key_pair,
    evaluate,
    expand_message_xmd,
    finalize,
    random_scalar,
    reshare_contribution,
    share_evaluate,
    split_key,
    sum_contributions,
)


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


# ---- RFC 9497 Appendix A.1.1: OPRF(ristretto255, SHA-512), OPRF mode ----------------
# https://www.rfc-editor.org/rfc/rfc9497#appendix-A.1.1
# Copied from the RFC's source text, github.com/cfrg/draft-irtf-cfrg-voprf
# draft-irtf-cfrg-voprf.md at 43da59f797c92248c0362e4c74cc10a8bd2b7b7d, and
# cross-checked against poc/vectors/allVectors.json in the same commit.
RFC9497_SEED = _h("a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3a3")
RFC9497_KEY_INFO = _h("74657374206b6579")
RFC9497_SK_SM = _h("5ebcea5ee37023ccb9fc2d2019f9d7737be85591ae8652ffa9ef0f4d37063b0e")

RFC9497_VECTORS = [
    pytest.param(
        {
            "Input": "00",
            "Blind": "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
            "BlindedElement": "609a0ae68c15a3cf6903766461307e5c8bb2f95e7e6550e1ffa2dc99e412803c",
            "EvaluationElement": "7ec6578ae5120958eb2db1745758ff379e77cb64fe77b0b2d8cc917ea0869c7e",
            "Output": "527759c3d9366f277d8c6020418d96bb393ba2afb20ff90df23fb7708264e2f3"
            "ab9135e3bd69955851de4b1f9fe8a0973396719b7912ba9ee8aa7d0b5e24bcf6",
        },
        id="test-vector-1",
    ),
    pytest.param(
        {
            "Input": "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
            "Blind": "64d37aed22a27f5191de1c1d69fadb899d8862b58eb4220029e036ec4c1f6706",
            "BlindedElement": "da27ef466870f5f15296299850aa088629945a17d1f5b7f5ff043f76b3c06418",
            "EvaluationElement": "b4cbf5a4f1eeda5a63ce7b77c7d23f461db3fcab0dd28e4e17cecb5c90d02c25",
            "Output": "f4a74c9c592497375e796aa837e907b1a045d34306a749db9f34221f7e750cb4"
            "f2a6413a6bf6fa5e19ba6348eb673934a722a7ede2e7621306d18951e7cf2c73",
        },
        id="test-vector-2",
    ),
]


def test_derive_key_pair_matches_rfc9497() -> None:
    secret, public = derive_key_pair(RFC9497_SEED, RFC9497_KEY_INFO)
    assert secret == RFC9497_SK_SM
    assert len(public) == 32
    assert public != bytes(32)


@pytest.mark.parametrize("vector", RFC9497_VECTORS)
def test_rfc9497_oprf_mode_vectors(vector: dict[str, str]) -> None:
    private_input = _h(vector["Input"])
    blind_scalar, blinded = blind(private_input, blind_scalar=_h(vector["Blind"]))
    assert blind_scalar == _h(vector["Blind"])
    assert blinded == _h(vector["BlindedElement"])
    evaluated = blind_evaluate(RFC9497_SK_SM, blinded)
    assert evaluated == _h(vector["EvaluationElement"])
    assert finalize(private_input, blind_scalar, evaluated) == _h(vector["Output"])
    assert evaluate(RFC9497_SK_SM, private_input) == _h(vector["Output"])


# ---- RFC 9380 Appendix K.3: expand_message_xmd(SHA-512) ------------------------------
# https://www.rfc-editor.org/rfc/rfc9380#appendix-K.3
# Copied from the RFC's source text, github.com/cfrg/draft-irtf-cfrg-hash-to-curve
# draft-irtf-cfrg-hash-to-curve.md at 664b13592116cecc9e52fb192dcde0ade36f904e.
XMD_SHA512_DST = b"QUUX-V01-CS02-with-expander-SHA512-256"
XMD_SHA512_VECTORS = [
    (b"", 0x20, "6b9a7312411d92f921c6f68ca0b6380730a1a4d982c507211a90964c394179ba"),
    (b"abc", 0x20, "0da749f12fbe5483eb066a5f595055679b976e93abe9be6f0f6318bce7aca8dc"),
    (
        b"",
        0x80,
        "41b037d1734a5f8df225dd8c7de38f851efdb45c372887be655212d07251b921"
        "b052b62eaed99b46f72f2ef4cc96bfaf254ebbbec091e1a3b9e4fb5e5b619d2e"
        "0c5414800a1d882b62bb5cd1778f098b8eb6cb399d5d9d18f5d5842cf5d13d7e"
        "b00a7cff859b605da678b318bd0e65ebff70bec88c753b159a805d2c89c55961",
    ),
    (
        b"abc",
        0x80,
        "7f1dddd13c08b543f2e2037b14cefb255b44c83cc397c1786d975653e36a6b11"
        "bdd7732d8b38adb4a0edc26a0cef4bb45217135456e58fbca1703cd6032cb134"
        "7ee720b87972d63fbf232587043ed2901bce7f22610c0419751c065922b48843"
        "1851041310ad659e4b23520e1772ab29dcdeb2002222a363f0c2b1c972b3efe1",
    ),
]


@pytest.mark.parametrize(("message", "length", "expected"), XMD_SHA512_VECTORS)
def test_expand_message_xmd_matches_rfc9380(message: bytes, length: int, expected: str) -> None:
    assert expand_message_xmd(message, XMD_SHA512_DST, length) == _h(expected)


def test_expand_message_xmd_refuses_out_of_range_parameters() -> None:
    with pytest.raises(OprfError):
        expand_message_xmd(b"", XMD_SHA512_DST, 255 * 64 + 1)
    with pytest.raises(OprfError):
        expand_message_xmd(b"", b"x" * 256, 32)


# ---- the protocol with random blinds -----------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_random_blind_round_trip_equals_direct_evaluation(seed: int) -> None:
    rng = DeterministicRng(b"oprf round trip %d" % seed)
    secret, _ = derive_key_pair(rng.random_bytes(32), b"")
    private_input = rng.random_bytes(seed * 7)
    blind_scalar, blinded = blind(private_input, rng=rng)
    output = finalize(private_input, blind_scalar, blind_evaluate(secret, blinded))
    assert output == evaluate(secret, private_input)
    assert len(output) == 64


def test_system_rng_blinds_differ_but_outputs_agree() -> None:
    secret = random_scalar()
    first_blind, first_blinded = blind(b"password")
    second_blind, second_blinded = blind(b"password")
    assert first_blind != second_blind
    assert first_blinded != second_blinded
    assert finalize(b"password", first_blind, blind_evaluate(secret, first_blinded)) == finalize(
        b"password", second_blind, blind_evaluate(secret, second_blinded)
    )


def test_maximum_length_input_is_accepted() -> None:
    longest = b"\x5a" * MAX_INPUT_LENGTH
    blind_scalar, blinded = blind(longest)
    assert finalize(longest, blind_scalar, blind_evaluate(RFC9497_SK_SM, blinded)) == evaluate(
        RFC9497_SK_SM, longest
    )


# ---- 2-of-3 threshold ---------------------------------------------------------------

PAIRS = [(1, 2), (1, 3), (2, 3)]


def _keyed_setup(seed: int) -> tuple[bytes, list[KeyShare], bytes, bytes, bytes]:
    rng = DeterministicRng(b"oprf threshold %d" % seed)
    secret = random_scalar(rng)
    shares = split_key(secret, rng)
    private_input = rng.random_bytes(20)
    blind_scalar, blinded = blind(private_input, rng=rng)
    return secret, shares, private_input, blind_scalar, blinded


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("pair", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_any_two_shares_combine_to_the_whole_key(seed: int, pair: tuple[int, int]) -> None:
    secret, shares, private_input, blind_scalar, blinded = _keyed_setup(seed)
    answers = {index: share_evaluate(shares[index - 1], blinded) for index in pair}
    combined = combine(answers)
    assert combined == blind_evaluate(secret, blinded)
    assert finalize(private_input, blind_scalar, combined) == evaluate(secret, private_input)


@pytest.mark.parametrize("seed", range(3))
def test_three_consistent_answers_combine(seed: int) -> None:
    secret, shares, _, _, blinded = _keyed_setup(seed)
    answers = [(share.index, share_evaluate(share, blinded)) for share in reversed(shares)]
    assert combine(answers) == blind_evaluate(secret, blinded)


def test_split_key_shares_are_fresh_and_none_is_the_key() -> None:
    secret = random_scalar()
    first, second = split_key(secret), split_key(secret)
    assert [share.index for share in first] == [1, 2, 3]
    assert len({share.scalar for share in first}) == 3
    assert all(share.scalar != secret for share in first)
    assert all(a.scalar != b.scalar for a, b in zip(first, second, strict=True))


def test_a_single_share_does_not_evaluate_the_key() -> None:
    secret, shares, private_input, blind_scalar, blinded = _keyed_setup(0)
    whole = blind_evaluate(secret, blinded)
    for share in shares:
        alone = share_evaluate(share, blinded)
        assert alone != whole
        assert finalize(private_input, blind_scalar, alone) != evaluate(secret, private_input)


@pytest.mark.parametrize("tampered_index", [1, 2, 3])
def test_a_tampered_answer_in_a_three_way_combine_is_refused(tampered_index: int) -> None:
    _, shares, _, _, blinded = _keyed_setup(1)
    answers = {share.index: share_evaluate(share, blinded) for share in shares}
    # A valid element under a wrong key: the kind of lie a rogue holder can tell.
    answers[tampered_index] = blind_evaluate(random_scalar(), blinded)
    with pytest.raises(OprfError, match="inconsistent"):
        combine(answers)


@pytest.mark.parametrize("lost", [1, 2, 3])
def test_two_holders_rebuild_a_lost_share_exactly(lost: int) -> None:
    secret, shares, private_input, blind_scalar, blinded = _keyed_setup(2)
    helper_a, helper_b = (share for share in shares if share.index != lost)
    contributions = [
        reshare_contribution(helper_a, lost, helper_b.index),
        reshare_contribution(helper_b, lost, helper_a.index),
    ]
    rebuilt = sum_contributions(lost, contributions)
    assert rebuilt.to_bytes() == shares[lost - 1].to_bytes()

    partner = helper_a
    combined = combine(
        {lost: share_evaluate(rebuilt, blinded), partner.index: share_evaluate(partner, blinded)}
    )
    assert finalize(private_input, blind_scalar, combined) == evaluate(secret, private_input)


def test_rebuilt_share_three_combines_with_share_one() -> None:
    secret, shares, _, _, blinded = _keyed_setup(3)
    rebuilt = sum_contributions(
        3,
        [reshare_contribution(shares[0], 3, 2), reshare_contribution(shares[1], 3, 1)],
    )
    assert rebuilt.to_bytes() == shares[2].to_bytes()
    combined = combine({1: share_evaluate(shares[0], blinded), 3: share_evaluate(rebuilt, blinded)})
    assert combined == blind_evaluate(secret, blinded)


def test_masked_contributions_hide_the_terms_and_still_sum_to_the_share() -> None:
    _, shares, _, _, _ = _keyed_setup(4)
    mask = random_scalar()
    plain = [reshare_contribution(shares[0], 3, 2), reshare_contribution(shares[1], 3, 1)]
    masked = [
        reshare_contribution(shares[0], 3, 2, pairwise_mask=mask),
        reshare_contribution(shares[1], 3, 1, pairwise_mask=mask),
    ]
    assert masked[0] != plain[0]
    assert masked[1] != plain[1]
    assert sum_contributions(3, masked).to_bytes() == shares[2].to_bytes()


# ---- key share encoding -------------------------------------------------------------


def test_key_share_round_trips_and_keeps_its_scalar_out_of_repr() -> None:
    for share in split_key(random_scalar()):
        encoded = share.to_bytes()
        assert len(encoded) == KEY_SHARE_LENGTH
        assert encoded[:2] == bytes((1, share.index))
        assert KeyShare.from_bytes(encoded).to_bytes() == encoded
        for text in (repr(share), str(share)):
            assert share.scalar.hex() not in text
            assert share.scalar.hex().upper() not in text
            assert repr(share.scalar) not in text


# ---- refusals -----------------------------------------------------------------------

IDENTITY = bytes(32)
# RFC 9496 Appendix A.2 (https://www.rfc-editor.org/rfc/rfc9496#appendix-A.2): the
# first four are non-canonical field encodings, the last two negative field elements.
NON_CANONICAL_ELEMENTS = [
    "00ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "f3ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "01ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
NON_CANONICAL_SCALARS = [
    GROUP_ORDER.to_bytes(32, "little"),
    (GROUP_ORDER + 1).to_bytes(32, "little"),
    b"\xff" * 32,
]


def _valid_element() -> bytes:
    return blind(b"some input")[1]


@pytest.mark.parametrize(
    "element",
    [IDENTITY, *(_h(value) for value in NON_CANONICAL_ELEMENTS), b"\x00" * 31, b"\x01" * 33, b""],
)
def test_bad_elements_are_refused_everywhere(element: bytes) -> None:
    share = split_key(RFC9497_SK_SM)[0]
    with pytest.raises(OprfError):
        blind_evaluate(RFC9497_SK_SM, element)
    with pytest.raises(OprfError):
        share_evaluate(share, element)
    with pytest.raises(OprfError):
        finalize(b"input", random_scalar(), element)
    with pytest.raises(OprfError):
        combine({1: element, 2: _valid_element()})
    with pytest.raises(OprfError):
        combine({1: _valid_element(), 2: _valid_element(), 3: element})


@pytest.mark.parametrize("scalar", [*NON_CANONICAL_SCALARS, bytes(32), b"\x01" * 31, b"\x01" * 33])
def test_bad_scalars_are_refused_everywhere(scalar: bytes) -> None:
    element = _valid_element()
    with pytest.raises(OprfError):
        blind_evaluate(scalar, element)
    with pytest.raises(OprfError):
        evaluate(scalar, b"input")
    with pytest.raises(OprfError):
        blind(b"input", blind_scalar=scalar)
    with pytest.raises(OprfError):
        finalize(b"input", scalar, element)
    with pytest.raises(OprfError):
        split_key(scalar)
    with pytest.raises(OprfError):
        KeyShare(index=1, scalar=scalar)
    with pytest.raises(OprfError):
        KeyShare.from_bytes(b"\x01\x01" + scalar)
    with pytest.raises(OprfError):
        reshare_contribution(split_key(RFC9497_SK_SM)[0], 3, 2, pairwise_mask=scalar)


@pytest.mark.parametrize("scalar", [*NON_CANONICAL_SCALARS, b"\x01" * 31])
def test_bad_contributions_are_refused(scalar: bytes) -> None:
    with pytest.raises(OprfError):
        sum_contributions(3, [scalar, random_scalar()])


def test_wrong_number_of_contributions_is_refused() -> None:
    with pytest.raises(OprfError):
        sum_contributions(3, [random_scalar()])
    with pytest.raises(OprfError):
        sum_contributions(3, [random_scalar()] * 3)


def test_overlong_inputs_are_refused() -> None:
    too_long = b"\x00" * (MAX_INPUT_LENGTH + 1)
    blind_scalar, blinded = blind(b"fine")
    with pytest.raises(OprfError):
        blind(too_long)
    with pytest.raises(OprfError):
        evaluate(RFC9497_SK_SM, too_long)
    with pytest.raises(OprfError):
        finalize(too_long, blind_scalar, blind_evaluate(RFC9497_SK_SM, blinded))
    with pytest.raises(OprfError):
        derive_key_pair(RFC9497_SEED, too_long)


@pytest.mark.parametrize("seed", [b"", b"\xa3" * 31, b"\xa3" * 33])
def test_seed_of_the_wrong_length_is_refused(seed: bytes) -> None:
    with pytest.raises(OprfError):
        derive_key_pair(seed, RFC9497_KEY_INFO)


def test_blind_takes_an_rng_or_a_scalar_not_both() -> None:
    with pytest.raises(OprfError):
        blind(b"input", rng=DeterministicRng(b"x"), blind_scalar=random_scalar())


def test_combine_refuses_duplicate_indices() -> None:
    _, shares, _, _, blinded = _keyed_setup(5)
    answer = share_evaluate(shares[0], blinded)
    with pytest.raises(OprfError, match="twice"):
        combine([(1, answer), (1, answer)])
    with pytest.raises(OprfError, match="twice"):
        combine([(1, answer), (2, share_evaluate(shares[1], blinded)), (1, answer)])


@pytest.mark.parametrize("bad_index", [0, 4, -1, True])
def test_out_of_range_indices_are_refused(bad_index: int) -> None:
    element = _valid_element()
    share = split_key(RFC9497_SK_SM)[0]
    with pytest.raises(OprfError):
        combine({bad_index: element, 2: element})
    with pytest.raises(OprfError):
        KeyShare(index=bad_index, scalar=random_scalar())
    with pytest.raises(OprfError):
        reshare_contribution(share, bad_index, 2)
    with pytest.raises(OprfError):
        reshare_contribution(share, 3, bad_index)
    with pytest.raises(OprfError):
        sum_contributions(bad_index, [random_scalar(), random_scalar()])


@pytest.mark.parametrize("encoded_index", [0, 4, 255])
def test_encoded_share_with_a_bad_index_is_refused(encoded_index: int) -> None:
    with pytest.raises(OprfError):
        KeyShare.from_bytes(bytes((1, encoded_index)) + random_scalar())


def test_encoded_share_with_a_bad_version_or_length_is_refused() -> None:
    encoded = split_key(RFC9497_SK_SM)[0].to_bytes()
    with pytest.raises(OprfError, match="version"):
        KeyShare.from_bytes(b"\x02" + encoded[1:])
    with pytest.raises(OprfError):
        KeyShare.from_bytes(encoded[:-1])
    with pytest.raises(OprfError):
        KeyShare.from_bytes(encoded + b"\x00")


def test_combine_needs_two_or_three_answers() -> None:
    with pytest.raises(OprfError):
        combine({1: _valid_element()})
    with pytest.raises(OprfError):
        combine({})


@pytest.mark.parametrize(("own", "target", "other"), [(1, 1, 2), (1, 3, 1), (1, 2, 2)])
def test_reshare_needs_three_distinct_indices(own: int, target: int, other: int) -> None:
    share = split_key(RFC9497_SK_SM)[own - 1]
    with pytest.raises(OprfError):
        reshare_contribution(share, target, other)
