"""Python's cyclic garbage collected on the GUI thread only.

The collector runs whenever any thread allocates past its threshold. A cycle that
holds a Qt widget (a dialog whose signal is connected to a lambda that refers to
the dialog) is then destroyed on whichever thread allocated: a worker, the push
listener's loop, the network pool. Qt widgets may only be destroyed on the GUI
thread, and the result is a rare segmentation fault far from its cause (the test
suite met it in `tests/ui/test_contacts_requests.py` and elsewhere). So while the
UI runs, automatic collection is off and a timer on the GUI thread collects with
the collector's own thresholds instead.
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

INTERVAL_MS = 500


class GuiThreadCollector(QObject):
    """Owns the collection from the moment it is made; `stop()` gives it back."""

    def __init__(self, parent: QObject | None = None, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__(parent)
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.collect_due)
        self._timer.start()

    def collect_due(self) -> int:
        """Collects the generations whose counts passed their thresholds, as the
        automatic collector would have; returns how many objects it freed."""
        thresholds, counts = gc.get_threshold(), gc.get_count()
        if counts[0] <= thresholds[0]:
            return 0
        generation = 0
        if counts[1] > thresholds[1]:
            generation = 2 if counts[2] > thresholds[2] else 1
        return gc.collect(generation)

    def stop(self) -> None:
        self._timer.stop()
        gc.collect()
        if self._was_enabled:
            gc.enable()


def collect_on_gui_thread(application: QObject) -> GuiThreadCollector:
    """Installs the collector for the application's lifetime (it is its child)."""
    return GuiThreadCollector(application)
