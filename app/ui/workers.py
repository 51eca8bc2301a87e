"""Run blocking work off the UI thread and hear back by signal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, SignalInstance


class _WorkerSignals(QObject):
    finished = Signal(object)
    failed = Signal(object)


class FunctionWorker(QRunnable):
    """Calls `function()` on a pool thread; emits `finished(result)` or `failed(error)`.

    The signals object lives on the thread that created the worker (the UI thread),
    so connected slots run there.
    """

    def __init__(self, function: Callable[[], Any]) -> None:
        super().__init__()
        self._function = function
        self.signals = _WorkerSignals()

    def run(self) -> None:
        try:
            result = self._function()
        except Exception as error:  # noqa: BLE001 - handed to the UI, which shows it
            self._emit(self.signals.failed, error)
        else:
            self._emit(self.signals.finished, result)

    def _emit(self, signal: SignalInstance, value: object) -> None:
        # Once the application has quit and torn its objects down, nobody is left to
        # hear the result: drop it rather than raise "Signal source has been
        # deleted" on a pool thread.
        if not shiboken6.isValid(self.signals):
            return
        signal.emit(value)


# Workers in flight. Without a reference held here, a caller that drops the
# returned worker lets Python free its signals object before the queued result
# reaches the UI thread, and the result is silently lost.
_IN_FLIGHT: set[FunctionWorker] = set()


def run_in_pool(
    function: Callable[[], Any],
    on_finished: Callable[[Any], None],
    on_failed: Callable[[BaseException], None],
    pool: QThreadPool | None = None,
) -> FunctionWorker:
    worker = FunctionWorker(function)
    _IN_FLIGHT.add(worker)

    def finished(result: Any) -> None:
        _IN_FLIGHT.discard(worker)
        on_finished(result)

    def failed(error: BaseException) -> None:
        _IN_FLIGHT.discard(worker)
        on_failed(error)

    worker.signals.finished.connect(finished)
    worker.signals.failed.connect(failed)
    (pool or QThreadPool.globalInstance()).start(worker)
    return worker
