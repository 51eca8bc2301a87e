"""Network layer: the client's only route to the relay (and, through it, the vault)."""

from app.net.relay_client import RelayClient, RelayError, RelayUnavailable

__all__ = ["RelayClient", "RelayError", "RelayUnavailable"]
