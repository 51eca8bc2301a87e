"""100 clients against one relay (short run): zero errors, nothing lost or
duplicated, memory bounded. The 60-second run: `python -m scripts.load_relay`."""

from __future__ import annotations

import pytest

from scripts.load_relay import MEMORY_BOUND_MB, run


@pytest.mark.slow
def test_hundred_clients_without_errors_loss_or_growing_memory() -> None:
    report = run(clients=100, seconds=10, rate=2.0)
    assert report.errors == 0
    assert report.sent >= 1500
    assert report.delivered == report.sent
    assert report.duplicates == 0
    assert report.rss_end_mb - report.rss_after_warmup_mb < MEMORY_BOUND_MB
