"""The encrypted local store (SQLCipher): repositories, key wrapping, backup export."""

from app.store.database import (
    Account,
    Attachment,
    BackupState,
    Contact,
    Conversation,
    Group,
    Message,
    OutboxItem,
    SearchHit,
    Store,
)
from app.store.errors import StoreCorrupt, StoreError, StoreLocked, WrongPassphrase
from app.store.keyfile import KeyringProtector, PassphraseProtector, Protector, keyring_usable

__all__ = [
    "Account",
    "Attachment",
    "BackupState",
    "Contact",
    "Conversation",
    "Group",
    "KeyringProtector",
    "Message",
    "OutboxItem",
    "PassphraseProtector",
    "Protector",
    "SearchHit",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreLocked",
    "WrongPassphrase",
    "keyring_usable",
]
