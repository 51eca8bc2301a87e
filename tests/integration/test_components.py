"""Each real component the suites rely on starts, answers and stops."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pkcs11
import psycopg

from tests.support.components import EtcdCluster, PostgresServer, SoftHSMToken, Swtpm, Xvfb
from tests.support.processes import python_env


def test_softhsm_token_is_usable_over_pkcs11(softhsm_token: SoftHSMToken, monkeypatch) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", str(softhsm_token.conf_path))
    library = pkcs11.lib(softhsm_token.library)
    token = library.get_token(token_label=softhsm_token.label)
    with token.open(user_pin=softhsm_token.pin) as session:
        assert len(session.generate_random(256)) == 32


def test_swtpm_answers_tpm2_tools(swtpm: Swtpm) -> None:
    first, second = swtpm.get_random(16), swtpm.get_random(16)
    assert len(first) == 16
    assert first != second


def test_etcd_cluster_replicates_and_survives_one_member_down(
    fresh_etcd_cluster: EtcdCluster,
) -> None:
    cluster = fresh_etcd_cluster
    cluster.put(b"greeting", b"hello", endpoint=0)
    assert cluster.get(b"greeting", endpoint=2) == b"hello"
    cluster.stop_member(0)
    cluster.put(b"greeting", b"still here", endpoint=1)
    assert cluster.get(b"greeting", endpoint=2) == b"still here"
    cluster.restart_member(0)
    assert cluster.get(b"greeting", endpoint=0) == b"still here"


def test_postgres_accepts_connections(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.dsn) as connection:
        row = connection.execute("select current_database(), 1 + 1").fetchone()
    assert row == (postgres_server.database, 2)


def test_real_qt_window_on_xvfb_can_be_screenshotted(xvfb: Xvfb, tmp_path: Path) -> None:
    shot = tmp_path / "window.png"
    program = textwrap.dedent(
        f"""
        from PySide6.QtCore import QTimer
        from PySide6.QtWidgets import QApplication, QLabel
        app = QApplication([])
        window = QLabel("Cipherline on Xvfb")
        window.resize(640, 400)
        window.show()
        def grab():
            window.grab().save({str(shot)!r})
            screen = app.primaryScreen().grabWindow(0)
            screen.save({str(tmp_path / "screen.png")!r})
            app.quit()
        QTimer.singleShot(500, grab)
        app.exec()
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=python_env(xvfb.env()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    from PIL import Image

    with Image.open(tmp_path / "screen.png") as image:
        assert image.size == (1280, 800)
        # A real window was painted: the screen is not one flat colour.
        low, high = image.convert("L").getextrema()
        assert high - low > 20
