"""Fixtures the service suites share: the relay's recording mailbox (an adversary
that keeps and replays every envelope; tests/support/mailbox_adversary.py), and
Alice and Bob on a real relay (a suite that needs others defines its own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services.helpers import Person
from tests.support.components import RelayProcess
from tests.support.mailbox_adversary import RecordingMailbox


@pytest.fixture
def mailbox(relay: RelayProcess) -> RecordingMailbox:
    return RecordingMailbox(relay)


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> Iterator[dict[str, Person]]:
    """Alice and Bob; whoever a test adds to the dict is stopped with them."""
    created = {name: Person(tmp_path, name, relay) for name in ("alice", "bob")}
    yield created
    for someone in created.values():
        someone.stop()
