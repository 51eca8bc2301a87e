"""The Qt binding itself: signal emission must not corrupt reference counts.

PySide6 6.12.0 released a reference to True/False on every emission, which
aborted the app ("bool_dealloc") after a few thousand signals. Run in a child
process so a regression fails this test instead of killing the suite.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import python_env

PROGRAM = """
import sys
from PySide6.QtCore import QCoreApplication, QObject, Signal, Slot

app = QCoreApplication([])

class Sender(QObject):
    value = Signal(object)
    flag = Signal(bool)

class Receiver(QObject):
    count = 0

    @Slot(object)
    def on_value(self, _value):
        Receiver.count += 1

sender, receiver = Sender(), Receiver()
sender.value.connect(receiver.on_value)
sender.flag.connect(lambda _flag: None)
before = sys.getrefcount(True), sys.getrefcount(False)
for _ in range(20_000):
    sender.value.emit(object())
    sender.flag.emit(True)
    sender.flag.emit(False)
after = sys.getrefcount(True), sys.getrefcount(False)
assert Receiver.count == 20_000
print(before, after)
sys.exit(0 if after[0] >= before[0] - 50 and after[1] >= before[1] - 50 else 3)
"""


def test_signal_emission_keeps_reference_counts() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env=python_env({"QT_QPA_PLATFORM": "offscreen"}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_pool_results_arrive_even_when_the_caller_drops_the_worker(qtbot: object) -> None:
    import gc

    from app.ui.workers import run_in_pool

    results: list[object] = []
    for number in range(20):
        run_in_pool(lambda number=number: number, results.append, results.append)
    gc.collect()
    qtbot.waitUntil(lambda: len(results) == 20, timeout=5_000)  # type: ignore[attr-defined]
    assert sorted(results) == list(range(20))  # type: ignore[type-var]
