"""Cyclic garbage is collected on the GUI thread only (app/ui/garbage.py): a cycle
holding a Qt widget must never be destroyed by a worker thread that allocated."""

from __future__ import annotations

import gc
import threading
import weakref

from PySide6.QtWidgets import QApplication, QDialog
from pytestqt.qtbot import QtBot

from app.ui.garbage import GuiThreadCollector


class _Cyclic(QDialog):
    """A dialog in a reference cycle (here, with itself), as a widget that keeps a
    callback referring back to it is."""

    def __init__(self) -> None:
        super().__init__()
        self.myself = self


def test_a_worker_that_allocates_collects_nothing_and_the_gui_thread_does(
    qtbot: QtBot, qapp: QApplication
) -> None:
    collector = GuiThreadCollector(qapp, interval_ms=50)
    try:
        assert not gc.isenabled()
        collected_on: list[str] = []
        dialog = _Cyclic()
        # Runs on whichever thread frees the dialog (with automatic collection on,
        # that was the worker below: checked by hand on the code before).
        weakref.finalize(dialog, lambda: collected_on.append(threading.current_thread().name))
        del dialog
        kept: list[list[object]] = []
        worker = threading.Thread(
            # Enough live containers to pass any generation's threshold.
            target=lambda: kept.extend([object()] for _ in range(200_000)),
            name="allocating-worker",
        )
        worker.start()
        worker.join()
        assert collected_on == []  # the worker's allocations collected nothing
        qtbot.waitUntil(lambda: collected_on == ["MainThread"], timeout=5_000)
    finally:
        collector.stop()
        collector.deleteLater()
