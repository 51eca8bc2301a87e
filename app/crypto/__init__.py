"""Cryptographic recipes: the only package that imports `cryptography.hazmat`.

Everything else in Cipherline calls these functions and types. They take
randomness (`Rng`) as a parameter where it matters for test vectors, hide key
material from `repr`, and report every authentication failure as one
`DecryptionError` so that callers cannot leak why a ciphertext was refused.
"""

from ._aead import NONCE_LENGTH, TAG_LENGTH, ReusableAead, aead_open, aead_seal
from ._asymmetric import (
    ED25519_KEY_LENGTH,
    ED25519_SIGNATURE_LENGTH,
    MLKEM768_CIPHERTEXT_LENGTH,
    MLKEM768_PUBLIC_KEY_LENGTH,
    MLKEM768_SEED_LENGTH,
    MLKEM768_SHARED_SECRET_LENGTH,
    X25519_KEY_LENGTH,
    DhPrivateKey,
    DhPublicKey,
    KemPrivateKey,
    KemPublicKey,
    SigningKey,
    VerifyKey,
)
from ._errors import CryptoError, DecryptionError, InvalidKey, InvalidSignature
from ._hashes import (
    RFC9106_SECOND_RECOMMENDED,
    Argon2Params,
    Sha256,
    argon2id,
    constant_time_equal,
    hkdf_sha256,
    hkdf_sha512,
    hmac_sha256,
    sha256,
    sha512,
)
from ._hpke import (
    HPKE_PRIVATE_KEY_LENGTH,
    HPKE_PUBLIC_KEY_LENGTH,
    HpkePrivateKey,
    HpkePublicKey,
    hpke_open,
    hpke_seal,
)
from ._random import SYSTEM_RNG, DeterministicRng, Rng, SystemRng, random_bytes
from ._secret import AeadKey, SecretKey
from ._stream import (
    NONCE_PREFIX_LENGTH,
    SEGMENT_OVERHEAD,
    StreamError,
    StreamOpener,
    StreamSealer,
    stream_nonce,
)
from ._tls import TlsMaterial, certificate_fingerprint, generate_tls_material

__all__ = [
    "ED25519_KEY_LENGTH",
    "ED25519_SIGNATURE_LENGTH",
    "HPKE_PRIVATE_KEY_LENGTH",
    "HPKE_PUBLIC_KEY_LENGTH",
    "MLKEM768_CIPHERTEXT_LENGTH",
    "MLKEM768_PUBLIC_KEY_LENGTH",
    "MLKEM768_SEED_LENGTH",
    "MLKEM768_SHARED_SECRET_LENGTH",
    "NONCE_LENGTH",
    "NONCE_PREFIX_LENGTH",
    "RFC9106_SECOND_RECOMMENDED",
    "SEGMENT_OVERHEAD",
    "SYSTEM_RNG",
    "TAG_LENGTH",
    "X25519_KEY_LENGTH",
    "AeadKey",
    "Argon2Params",
    "CryptoError",
    "DecryptionError",
    "DeterministicRng",
    "DhPrivateKey",
    "DhPublicKey",
    "HpkePrivateKey",
    "HpkePublicKey",
    "InvalidKey",
    "InvalidSignature",
    "KemPrivateKey",
    "KemPublicKey",
    "ReusableAead",
    "Rng",
    "SecretKey",
    "Sha256",
    "SigningKey",
    "StreamError",
    "StreamOpener",
    "StreamSealer",
    "SystemRng",
    "TlsMaterial",
    "VerifyKey",
    "aead_open",
    "aead_seal",
    "argon2id",
    "certificate_fingerprint",
    "constant_time_equal",
    "generate_tls_material",
    "hkdf_sha256",
    "hkdf_sha512",
    "hmac_sha256",
    "hpke_open",
    "hpke_seal",
    "random_bytes",
    "sha256",
    "sha512",
    "stream_nonce",
]
