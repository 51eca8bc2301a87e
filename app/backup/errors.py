"""What can go wrong with a backup, each with a sentence a person can act on."""

from __future__ import annotations


class BackupError(Exception):
    """Base of every backup error; `str()` is a sentence for the UI and the CLI."""

    exit_code = 1


class InvalidKeyFormat(BackupError):
    exit_code = 2

    def __init__(self, detail: str) -> None:
        super().__init__(f"that key is not valid: {detail}")


class WrongKey(BackupError):
    exit_code = 3

    def __init__(self) -> None:
        super().__init__("that key does not open this backup")


class NotABackup(BackupError):
    exit_code = 4


class CorruptBackup(BackupError):
    """Authentication or structure failed; `offset` is the first bad byte's file offset."""

    exit_code = 5

    def __init__(self, offset: int, detail: str = "") -> None:
        text = f"the backup is damaged or cut short at byte {offset:,}"
        super().__init__(f"{text} ({detail})" if detail else text)
        self.offset = offset


class BackupCancelled(BackupError):
    exit_code = 6

    def __init__(self) -> None:
        super().__init__("the backup was cancelled; the previous backup is untouched")


class NotEnoughSpace(BackupError):
    exit_code = 7


class ProfileNotEmpty(BackupError):
    exit_code = 8

    def __init__(
        self,
        message: str = "this profile already holds an account; restore into a new, empty profile",
    ) -> None:
        super().__init__(message)


class BackupNotConfigured(BackupError):
    exit_code = 9
