"""The store's error tree: everything it raises on bad keys, files or data."""

from __future__ import annotations


class StoreError(Exception):
    """The store cannot do what was asked; the message says why in a sentence."""


class WrongPassphrase(StoreError):
    def __init__(self) -> None:
        super().__init__("that passphrase is not correct; nothing was changed")


class StoreLocked(StoreError):
    """The key that unlocks the store is not available (keyring missing or emptied)."""


class StoreCorrupt(StoreError):
    """The key file or database is damaged or was not written by Cipherline."""
