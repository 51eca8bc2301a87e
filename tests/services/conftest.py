"""Fixtures the service suites share: the relay's recording mailbox (an adversary
that keeps and replays every envelope; tests/support/mailbox_adversary.py)."""

from __future__ import annotations

import pytest

from tests.support.components import RelayProcess
from tests.support.mailbox_adversary import RecordingMailbox


@pytest.fixture
def mailbox(relay: RelayProcess) -> RecordingMailbox:
    return RecordingMailbox(relay)
