"""The outbox's retry policy: what each answer of the relay means for an outbox
item, and how long a refused send waits. Plain functions, no I/O and no clock.

Nothing leaves the outbox unless the relay took it or said it can never take it:

- `queued`, `duplicate`: accepted, the item leaves the outbox.
- `unknown_recipient` (the device or account does not exist) and `rejected` (this
  one item alone made the relay refuse a request with a 4xx): permanent, the
  message is marked failed.
- `mailbox_full`, and any status this client does not know or an item the
  answer left out: temporary for that recipient device. Its items wait
  `retry_delay` and are sent again; other devices' items are not held up.
- A refusal of the whole request (429, 503, unreachable) is no answer about any
  item: the whole flush waits `retry_delay` and nothing is marked failed.

An item still refused for its recipient `UNDELIVERABLE_AFTER_MS` after it was
queued fails: the relay deletes envelopes nobody fetched within 30 days, so a
mailbox that stayed full that long belongs to a device that is gone or flooded
for good, and the user should learn the message did not arrive.
"""

from __future__ import annotations

import enum

ACCEPTED = frozenset({"queued", "duplicate"})
PERMANENT = frozenset({"unknown_recipient", "rejected"})
# What the client calls an item that made the relay refuse a request of its own,
# and one the relay's answer left out (not stored, so it waits).
REJECTED = "rejected"
UNANSWERED = "unanswered"

# The first wait when the relay names none; each repeat doubles it, up to
# MAX_DELAY_SECONDS (a relay asking for longer is asked again after that).
BASE_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 15 * 60.0
# Up to this fraction more, so that the many senders a flood or an outage turned
# away at the same moment do not all come back at the same moment.
JITTER = 0.2
UNDELIVERABLE_AFTER_MS = 30 * 86_400_000


class Verdict(enum.Enum):
    SENT = "sent"
    FAILED = "failed"
    LATER = "later"


def verdict(status: str) -> Verdict:
    """What the relay's status for one item means."""
    if status in ACCEPTED:
        return Verdict.SENT
    if status in PERMANENT:
        return Verdict.FAILED
    # Unknown statuses wait rather than fail: nothing is lost to a relay newer
    # than this client, and the deadline still ends an item that never goes.
    return Verdict.LATER


def retry_delay(failures: int, retry_after: float | None, rand: float) -> float:
    """Seconds to wait after the `failures`-th refusal in a row (1 for the first).

    Never less than the relay's `retry_after` (up to the cap): the first wait is
    what the relay asked for, each repeat doubles it, and `rand` (uniform in
    [0, 1)) adds up to JITTER of it."""
    floor = min(max(retry_after if retry_after is not None else 0.0, 0.0), MAX_DELAY_SECONDS)
    start = max(floor, BASE_DELAY_SECONDS)
    grown = min(start * 2.0 ** min(max(failures, 1) - 1, 32), MAX_DELAY_SECONDS)
    return max(floor, grown * (1.0 + JITTER * min(max(rand, 0.0), 1.0)))


def expired(created_at_ms: int, now_ms: int) -> bool:
    """Whether an item refused again now has waited too long to go on trying."""
    return now_ms - created_at_ms >= UNDELIVERABLE_AFTER_MS
