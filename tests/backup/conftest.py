from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.store import Store
from tests.store.conftest import protector

SECRET_TEXT = "the eagle lands at midnight"


def populate(
    store: Store, profile: Path, messages: int = 50, attachment_bytes: int = 300_000
) -> None:
    with store.transaction():
        conversation = store.conversations.direct("bob", now=1)
        for number in range(messages):
            store.messages.add(
                conversation_id=conversation.id,
                uuid=f"bob-{number}",
                sender="bob",
                outgoing=number % 2 == 0,
                body=f"{SECRET_TEXT} #{number}",
                sent_at=1_000 + number,
                status="received",
            )
        store.settings.set("theme", "dark")
    attachments = profile / "attachments"
    attachments.mkdir(exist_ok=True)
    (attachments / "a1.bin").write_bytes(os.urandom(attachment_bytes))
    (attachments / "nested").mkdir(exist_ok=True)
    (attachments / "nested" / "a2.bin").write_bytes(b"small file")


def add_message(store: Store, text: str) -> None:
    """One message from bob, whose text is also its id: a change for a backup to see."""
    with store.transaction():
        conversation = store.conversations.direct("bob", now=1)
        store.messages.add(
            conversation_id=conversation.id,
            uuid=f"new-{text}",
            sender="bob",
            outgoing=False,
            body=text,
            sent_at=9_999,
            status="received",
        )


@pytest.fixture
def full_store(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    profile = tmp_path / "profile"
    store = Store.create(profile, protector())
    populate(store, profile)
    yield store, profile
    store.close()
