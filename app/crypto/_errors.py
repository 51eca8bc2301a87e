"""The one error tree of the crypto layer.

Every failure to authenticate or decrypt is reported as `DecryptionError`, whatever
went wrong inside, so callers cannot build an oracle out of error details.
"""


class CryptoError(Exception):
    """Base class for every error raised by `app.crypto`."""


class DecryptionError(CryptoError):
    """A ciphertext did not authenticate under the given key and associated data."""


class InvalidSignature(CryptoError):
    """A signature did not verify under the given public key."""


class InvalidKey(CryptoError):
    """Bytes do not encode a key of the expected kind and length."""
