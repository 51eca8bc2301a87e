"""The sans-I/O protocol core: identities, PQXDH, Double Ratchet, Sender Keys,
safety numbers, attachments and content encodings. Bytes in, bytes out."""

from app.protocol.errors import (
    AuthenticationError,
    BundleError,
    ExpiredPrekey,
    MalformedMessage,
    NoSession,
    PrekeyReplay,
    ProtocolError,
    ReplayError,
)

__all__ = [
    "AuthenticationError",
    "BundleError",
    "ExpiredPrekey",
    "MalformedMessage",
    "NoSession",
    "PrekeyReplay",
    "ProtocolError",
    "ReplayError",
]
