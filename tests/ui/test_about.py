"""The About box shows the one version number (app/__init__.py), as --version does."""

from __future__ import annotations

import subprocess
import sys

from pytestqt.qtbot import QtBot

from app import __version__
from app.ui.settings import SettingsDialog
from tests.support.processes import python_env


def test_about_tab_and_version_flag_agree(qtbot: QtBot) -> None:
    dialog = SettingsDialog("alice", "laptop", previews=True, lock_minutes=0, lock_available=False)
    qtbot.addWidget(dialog)
    titles = [dialog.tabs.tabText(i) for i in range(dialog.tabs.count())]
    assert "About" in titles
    assert f"Cipherline {__version__}" in dialog.about_label.text()
    version = subprocess.run(
        [sys.executable, "-m", "app", "--version"],
        env=python_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.strip() == f"cipherline {__version__}"
