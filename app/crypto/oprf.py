"""RFC 9497 OPRF over ristretto255 with SHA-512, and a 2-of-3 threshold key.

Ciphersuite: RFC 9497 "ristretto255-SHA512" in mode 0x00 (modeOPRF, the base,
non-verifiable mode), so the context string is
``"OPRFV1-" || I2OSP(0x00, 1) || "-ristretto255-SHA512"``.

- HashToGroup: 64 bytes of expand_message_xmd(SHA-512) (RFC 9380 section 5.3.1)
  under the DST ``"HashToGroup-" || contextString``, mapped with libsodium's
  ``crypto_core_ristretto255_from_hash`` (the RFC 9496 one-way map, applied twice
  and added, as RFC 9380's hash_to_ristretto255 does).
- HashToScalar: 64 bytes of expand_message_xmd(SHA-512) under
  ``"HashToScalar-" || contextString`` (``"DeriveKeyPair" || contextString`` for
  key derivation), read little-endian and reduced mod the group order.
- Elements are the 32-byte canonical ristretto255 encodings; scalars are 32-byte
  little-endian integers below the group order ℓ = 2^252 +
  27742317777372353535851937790883648493. Every element or scalar that comes in
  from outside is checked: a non-canonical encoding, the identity element, a
  zero key or blind, or a wrong length raises `OprfError`.
- Finalize: SHA-512(I2OSP(len(input), 2) || input || I2OSP(32, 2) ||
  unblinded_element || "Finalize"), 64 bytes.

Every group and scalar operation is libsodium's (ristretto255 API, through
pysodium's ctypes binding of the system libsodium >= 1.0.18); this module does
no curve arithmetic of its own. PyNaCl was the first choice but, as of 1.6.2, it
binds none of libsodium's ristretto255 functions (pyca/pynacl pull request 646
was never merged). Only public values (share indices and their Lagrange
coefficients) are computed with Python integers.

Threshold evaluation (2 of 3, as in the threshold OPRFs of Jarecki et al. and
Signal's SVR3): `split_key` picks a random degree-1 polynomial f over the scalar
field with f(0) = sk and hands out the shares k_i = f(i) for i = 1, 2, 3. Each
holder answers a blinded element B with Z_i = k_i·B (`share_evaluate`). For any
two distinct indices a, b, Lagrange interpolation at 0 gives
λ_a = b / (b - a) and λ_b = a / (a - b), so λ_a·Z_a + λ_b·Z_b = f(0)·B = sk·B,
exactly `blind_evaluate(sk, B)` (`combine`). Given all three answers, `combine`
also checks that the third lies on the line through the other two
(Z_c = λ_a(c)·Z_a + λ_b(c)·Z_b), so a single wrong answer is detected.

Share recovery without the password: a lost share f(t) is
λ_a(t)·k_a + λ_b(t)·k_b with the Lagrange coefficients over {a, b} evaluated at
x = t. Each of the two remaining holders computes its term
(`reshare_contribution`) and the new holder adds them (`sum_contributions`).
Without a mask the new holder learns λ_a(t)·k_a and hence k_a (λ is public), that
is both surviving shares and so the whole key. To avoid that, the two helpers
agree on a random scalar r (out of band, e.g. over their own authenticated
channel) and pass it as `pairwise_mask`: the helper with the smaller index adds
r, the other subtracts it, the sum is unchanged and each term alone is uniformly
random.

Serialized key share (34 bytes): ``u8 version (= 1) || u8 index (1..3) ||
[32] scalar``, the scalar little-endian, canonical (below ℓ) and non-zero.

Sans-I/O: no sockets, files or clocks; randomness comes from an `Rng`
(`SYSTEM_RNG` by default) so tests can be reproducible.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pysodium

from ._random import SYSTEM_RNG, Rng

GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
ELEMENT_LENGTH = 32
SCALAR_LENGTH = 32
OUTPUT_LENGTH = 64
SEED_LENGTH = 32
MAX_INPUT_LENGTH = 2**16 - 1

MODE_OPRF = 0x00
CONTEXT_STRING = b"OPRFV1-" + MODE_OPRF.to_bytes(1, "big") + b"-ristretto255-SHA512"
_HASH_TO_GROUP_DST = b"HashToGroup-" + CONTEXT_STRING
_HASH_TO_SCALAR_DST = b"HashToScalar-" + CONTEXT_STRING
# RFC 9497 section 3.2.1 writes this one without a hyphen.
_DERIVE_KEY_PAIR_DST = b"DeriveKeyPair" + CONTEXT_STRING

SHARE_FORMAT_VERSION = 1
SHARE_INDICES = (1, 2, 3)
KEY_SHARE_LENGTH = 2 + SCALAR_LENGTH

_SHA512_OUTPUT = 64
_SHA512_BLOCK = 128
# Both hash-to-group and hash-to-scalar draw 64 bytes: 2x the 32-byte ristretto255
# field and scalar size, so the bias left after reduction is negligible.
_UNIFORM_BYTES = 64
_ZERO_32 = bytes(32)

if pysodium.sodium_init() < 0:  # pragma: no cover - libsodium itself is broken
    raise ImportError("libsodium failed to initialise")


class OprfError(ValueError):
    """An OPRF input, element, scalar or share was malformed or inconsistent."""


# ---- RFC 9380 expand_message_xmd ---------------------------------------------------


def expand_message_xmd(message: bytes, dst: bytes, length: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512 (b_in_bytes = 64, s_in_bytes = 128)."""
    blocks = -(-length // _SHA512_OUTPUT)
    if length < 0 or blocks > 255 or length > 0xFFFF or len(dst) > 255:
        raise OprfError("expand_message_xmd parameters out of range")
    dst_prime = dst + len(dst).to_bytes(1, "big")
    message_prime = bytes(_SHA512_BLOCK) + message + length.to_bytes(2, "big") + b"\x00" + dst_prime
    b_0 = hashlib.sha512(message_prime).digest()
    b_i = hashlib.sha512(b_0 + b"\x01" + dst_prime).digest()
    uniform = [b_i]
    for i in range(2, blocks + 1):
        chained = bytes(x ^ y for x, y in zip(b_0, b_i, strict=True))
        b_i = hashlib.sha512(chained + i.to_bytes(1, "big") + dst_prime).digest()
        uniform.append(b_i)
    return b"".join(uniform)[:length]


# ---- group and scalar helpers (all arithmetic in libsodium) -----------------------


def _is_zero(value: bytes) -> bool:
    return hmac.compare_digest(value, _ZERO_32)


def _reduce_wide(wide: bytes) -> bytes:
    reduced: bytes = pysodium.crypto_core_ristretto255_scalar_reduce(wide)
    return reduced


def _scalar_from_int(value: int) -> bytes:
    # Only for public values (indices, Lagrange coefficients).
    return (value % GROUP_ORDER).to_bytes(SCALAR_LENGTH, "little")


def _scalar_add(x: bytes, y: bytes) -> bytes:
    total: bytes = pysodium.crypto_core_ristretto255_scalar_add(x, y)
    return total


def _scalar_sub(x: bytes, y: bytes) -> bytes:
    difference: bytes = pysodium.crypto_core_ristretto255_scalar_sub(x, y)
    return difference


def _scalar_mul(x: bytes, y: bytes) -> bytes:
    product: bytes = pysodium.crypto_core_ristretto255_scalar_mul(x, y)
    return product


def _scalar_invert(scalar: bytes) -> bytes:
    inverse: bytes = pysodium.crypto_core_ristretto255_scalar_invert(scalar)
    return inverse


def _check_scalar(scalar: bytes, what: str, *, allow_zero: bool = False) -> bytes:
    if not isinstance(scalar, bytes) or len(scalar) != SCALAR_LENGTH:
        raise OprfError(f"{what} must be {SCALAR_LENGTH} bytes")
    # A canonical scalar is the one that survives reduction mod ℓ unchanged; this
    # keeps the comparison in libsodium and constant time rather than a Python
    # integer comparison on secret data.
    if not hmac.compare_digest(_reduce_wide(scalar + _ZERO_32), scalar):
        raise OprfError(f"{what} is not a canonical scalar")
    if not allow_zero and _is_zero(scalar):
        raise OprfError(f"{what} is zero")
    return scalar


def _check_element(element: bytes, what: str) -> bytes:
    if not isinstance(element, bytes) or len(element) != ELEMENT_LENGTH:
        raise OprfError(f"{what} must be {ELEMENT_LENGTH} bytes")
    # libsodium accepts the identity's encoding as valid; RFC 9497 does not.
    if _is_zero(element):
        raise OprfError(f"{what} is the identity element")
    if not pysodium.crypto_core_ristretto255_is_valid_point(element):
        raise OprfError(f"{what} is not a canonical ristretto255 encoding")
    return element


def _check_input(private_input: bytes) -> bytes:
    if not isinstance(private_input, bytes):
        raise OprfError("input must be bytes")
    if len(private_input) > MAX_INPUT_LENGTH:
        raise OprfError(f"input longer than {MAX_INPUT_LENGTH} bytes")
    return private_input


def _scalar_mult(scalar: bytes, element: bytes) -> bytes:
    try:
        product: bytes = pysodium.crypto_scalarmult_ristretto255(scalar, element)
    except ValueError as exc:
        # libsodium refuses a product that is the identity element.
        raise OprfError("scalar multiplication gave the identity element") from exc
    return product


def _element_add(p: bytes, q: bytes) -> bytes:
    total: bytes = pysodium.crypto_core_ristretto255_add(p, q)
    return total


def _hash_to_group(private_input: bytes) -> bytes:
    uniform = expand_message_xmd(private_input, _HASH_TO_GROUP_DST, _UNIFORM_BYTES)
    element: bytes = pysodium.crypto_core_ristretto255_from_hash(uniform)
    if _is_zero(element):  # pragma: no cover - needs a SHA-512 preimage
        raise OprfError("input hashes to the identity element")
    return element


def _hash_to_scalar(message: bytes, dst: bytes) -> bytes:
    return _reduce_wide(expand_message_xmd(message, dst, _UNIFORM_BYTES))


def random_scalar(rng: Rng | None = None) -> bytes:
    """A uniformly random non-zero scalar: 64 random bytes reduced mod ℓ."""
    source = rng or SYSTEM_RNG
    while True:
        scalar = _reduce_wide(source.random_bytes(64))
        if not _is_zero(scalar):
            return scalar


def _unblinded_output(private_input: bytes, unblinded_element: bytes) -> bytes:
    return hashlib.sha512(
        len(private_input).to_bytes(2, "big")
        + private_input
        + len(unblinded_element).to_bytes(2, "big")
        + unblinded_element
        + b"Finalize"
    ).digest()


# ---- RFC 9497 OPRF ----------------------------------------------------------------


def derive_key_pair(seed: bytes, info: bytes) -> tuple[bytes, bytes]:
    """RFC 9497 section 3.2.1 DeriveKeyPair: (secret scalar, public element)."""
    if not isinstance(seed, bytes) or len(seed) != SEED_LENGTH:
        raise OprfError(f"seed must be {SEED_LENGTH} bytes")
    if not isinstance(info, bytes) or len(info) > MAX_INPUT_LENGTH:
        raise OprfError(f"info must be bytes of at most {MAX_INPUT_LENGTH}")
    derive_input = seed + len(info).to_bytes(2, "big") + info
    for counter in range(256):
        secret = _hash_to_scalar(derive_input + counter.to_bytes(1, "big"), _DERIVE_KEY_PAIR_DST)
        if not _is_zero(secret):
            public: bytes = pysodium.crypto_scalarmult_ristretto255_base(secret)
            return secret, public
    raise OprfError("DeriveKeyPair found no non-zero scalar")  # pragma: no cover


def blind(
    private_input: bytes, rng: Rng | None = None, *, blind_scalar: bytes | None = None
) -> tuple[bytes, bytes]:
    """Client step 1: (blind, blinded_element), the blind drawn from `rng`.

    `blind_scalar` fixes the blind instead; it exists for test vectors only, since
    reusing a blind links the client's requests.
    """
    _check_input(private_input)
    if blind_scalar is None:
        blind_scalar = random_scalar(rng)
    elif rng is not None:
        raise OprfError("give either rng or blind_scalar, not both")
    else:
        _check_scalar(blind_scalar, "blind")
    blinded_element = _scalar_mult(blind_scalar, _hash_to_group(private_input))
    return blind_scalar, blinded_element


def blind_evaluate(secret_key: bytes, blinded_element: bytes) -> bytes:
    """Server step: the evaluated element sk·B."""
    _check_scalar(secret_key, "secret key")
    _check_element(blinded_element, "blinded element")
    return _scalar_mult(secret_key, blinded_element)


def finalize(private_input: bytes, blind_scalar: bytes, evaluated_element: bytes) -> bytes:
    """Client step 2: unblind the server's answer and hash it to the 64-byte output."""
    _check_input(private_input)
    _check_scalar(blind_scalar, "blind")
    _check_element(evaluated_element, "evaluated element")
    unblinded = _scalar_mult(_scalar_invert(blind_scalar), evaluated_element)
    return _unblinded_output(private_input, unblinded)


def evaluate(secret_key: bytes, private_input: bytes) -> bytes:
    """The PRF computed directly by whoever holds both key and input."""
    _check_scalar(secret_key, "secret key")
    _check_input(private_input)
    return _unblinded_output(private_input, _scalar_mult(secret_key, _hash_to_group(private_input)))


# ---- 2-of-3 threshold key ---------------------------------------------------------


def _check_index(index: int, what: str = "share index") -> int:
    # bool is an int; True as an index is a bug, not share 1.
    if isinstance(index, bool) or not isinstance(index, int) or index not in SHARE_INDICES:
        raise OprfError(f"{what} must be one of {SHARE_INDICES}")
    return index


@dataclass(frozen=True, eq=False)
class KeyShare:
    """One holder's share f(index) of the OPRF key. Compare with `to_bytes()`."""

    index: int
    scalar: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_index(self.index)
        _check_scalar(self.scalar, "share scalar")

    def to_bytes(self) -> bytes:
        return bytes((SHARE_FORMAT_VERSION, self.index)) + self.scalar

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyShare:
        if not isinstance(data, bytes) or len(data) != KEY_SHARE_LENGTH:
            raise OprfError(f"a key share is {KEY_SHARE_LENGTH} bytes")
        if data[0] != SHARE_FORMAT_VERSION:
            raise OprfError(f"unknown key share version {data[0]}")
        return cls(index=data[1], scalar=data[2:])


def _lagrange_coefficient(index: int, other: int, at: int) -> bytes:
    """λ_index(at) for the two-point set {index, other}: (at - other) / (index - other)."""
    numerator = (at - other) % GROUP_ORDER
    denominator = (index - other) % GROUP_ORDER
    return _scalar_from_int(numerator * pow(denominator, -1, GROUP_ORDER))


def split_key(secret_key: bytes, rng: Rng | None = None) -> list[KeyShare]:
    """Shamir-share `secret_key` 2-of-3: shares f(1), f(2), f(3) of f(x) = sk + a·x."""
    _check_scalar(secret_key, "secret key")
    while True:
        slope = random_scalar(rng)
        values = [
            _scalar_add(secret_key, _scalar_mul(slope, _scalar_from_int(x))) for x in SHARE_INDICES
        ]
        # f(x) = 0 for some x happens with probability about 3/ℓ; a zero share
        # would be refused everywhere, so draw again rather than hand it out.
        if not any(_is_zero(value) for value in values):
            return [
                KeyShare(index=x, scalar=value)
                for x, value in zip(SHARE_INDICES, values, strict=True)
            ]


def share_evaluate(share: KeyShare, blinded_element: bytes) -> bytes:
    """A share holder's answer k_i·B."""
    return blind_evaluate(share.scalar, blinded_element)


def _interpolate(first: tuple[int, bytes], second: tuple[int, bytes], at: int) -> bytes:
    (a, z_a), (b, z_b) = first, second
    return _element_add(
        _scalar_mult(_lagrange_coefficient(a, b, at), z_a),
        _scalar_mult(_lagrange_coefficient(b, a, at), z_b),
    )


def combine(evaluations: Mapping[int, bytes] | Iterable[tuple[int, bytes]]) -> bytes:
    """sk·B from the answers of 2 or 3 distinct share holders, keyed by share index.

    With 3 answers, the third must agree with the line through the other two,
    otherwise `OprfError`: a holder answered with the wrong key or was tampered with.
    """
    pairs = list(evaluations.items()) if isinstance(evaluations, Mapping) else list(evaluations)
    if len(pairs) not in (2, 3):
        raise OprfError("combine needs the answers of 2 or 3 share holders")
    seen: set[int] = set()
    for index, element in pairs:
        _check_index(index)
        if index in seen:
            raise OprfError(f"share index {index} given twice")
        seen.add(index)
        _check_element(element, f"evaluation {index}")
    pairs.sort(key=lambda pair: pair[0])
    first, second = pairs[0], pairs[1]
    combined = _interpolate(first, second, at=0)
    if len(pairs) == 3:
        third_index, third_element = pairs[2]
        expected = _interpolate(first, second, at=third_index)
        if not hmac.compare_digest(expected, third_element):
            raise OprfError("the three evaluations are inconsistent")
    if _is_zero(combined):
        raise OprfError("combined evaluation is the identity element")
    return combined


def reshare_contribution(
    share: KeyShare,
    target_index: int,
    other_index: int,
    *,
    pairwise_mask: bytes | None = None,
) -> bytes:
    """This holder's term λ·k toward the share for `target_index` (see module docstring).

    `pairwise_mask` is a random scalar the two helpers share and the new holder
    does not know; without it the new holder learns both helpers' shares.
    """
    _check_index(target_index, "target index")
    _check_index(other_index, "other index")
    if len({share.index, target_index, other_index}) != 3:
        raise OprfError("own, other and target share indices must all differ")
    term = _scalar_mul(
        _lagrange_coefficient(share.index, other_index, at=target_index), share.scalar
    )
    if pairwise_mask is None:
        return term
    _check_scalar(pairwise_mask, "pairwise mask")
    # Opposite signs on the two helpers make the masks cancel in the sum.
    if share.index < other_index:
        return _scalar_add(term, pairwise_mask)
    return _scalar_sub(term, pairwise_mask)


def sum_contributions(index: int, contributions: Sequence[bytes]) -> KeyShare:
    """The rebuilt share for `index` from the two helpers' `reshare_contribution`s."""
    _check_index(index)
    if len(contributions) != 2:
        raise OprfError("a share is rebuilt from exactly 2 contributions")
    first, second = (_check_scalar(c, "contribution", allow_zero=True) for c in contributions)
    return KeyShare(index=index, scalar=_scalar_add(first, second))
