"""Network layer: the relay client (requests) and the push listener (WebSocket). No Qt."""

from app.net.relay_client import (
    AuthError,
    Conflict,
    Envelope,
    NotFound,
    OutgoingEnvelope,
    RateLimited,
    RelayClient,
    RelayError,
    RelayUnavailable,
)

__all__ = [
    "AuthError",
    "Conflict",
    "Envelope",
    "NotFound",
    "OutgoingEnvelope",
    "RateLimited",
    "RelayClient",
    "RelayError",
    "RelayUnavailable",
]
