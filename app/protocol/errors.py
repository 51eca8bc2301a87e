"""The protocol core's error tree. Hostile input raises these and nothing else."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every error the protocol core raises on input it cannot accept."""


class MalformedMessage(ProtocolError):
    """Bytes that are not a well-formed message of the expected kind and version."""


class AuthenticationError(ProtocolError):
    """A message, signature or key failed authentication: altered, forged or misrouted."""


class ReplayError(ProtocolError):
    """A message that was already decrypted, or whose key was deleted."""


class PrekeyReplay(ReplayError):
    """A prekey message whose session start was already used: a replay of a first
    message (or a late copy of one whose session has since been replaced). It never
    starts a session and changes no state."""


class ExpiredPrekey(AuthenticationError):
    """A session start that names a signed prekey or last-resort KEM prekey this
    device made but has since deleted (rotated out and past its grace period). It
    can no longer be opened; it starts no session and changes no state."""


class BundleError(ProtocolError):
    """A prekey bundle that is malformed or whose signatures do not verify."""


class NoSession(ProtocolError):
    """A normal message arrived for which no session exists."""
