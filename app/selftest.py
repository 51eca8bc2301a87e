"""`cipherline --self-test`: proves an installed (or frozen) build works end to end.

Runs entirely in a temporary directory and touches no profile: the encrypted
store, a post-quantum session with the Double Ratchet, OPAQUE, a backup written,
verified and restored, and the Qt platform plugin. Prints one line per check.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from app import __version__

CheckResult = str


def _store(tmp: Path) -> CheckResult:
    from app.crypto import Argon2Params
    from app.store import PassphraseProtector, Store

    fast = Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)
    profile = tmp / "profile"
    store = Store.create(profile, PassphraseProtector("self-test passphrase", fast))
    with store.transaction():
        conversation = store.conversations.direct("self-test", now=1)
        store.messages.add(
            conversation_id=conversation.id,
            uuid="self-test-1",
            sender="self-test",
            outgoing=False,
            body="self-test secret text",
            sent_at=1,
            status="received",
        )
    store.close()
    reopened = Store.open(profile, PassphraseProtector("self-test passphrase", fast))
    hits = reopened.messages.search("secret")
    reopened.close()
    raw = (profile / "store.db").read_bytes()
    if raw.startswith(b"SQLite format 3") or b"self-test secret text" in raw or len(hits) != 1:
        raise RuntimeError("the store is not encrypted or lost the message")
    return "SQLCipher store: created, reopened, searched; no plaintext on disk"


def _session(_tmp: Path) -> CheckResult:
    from app.protocol.identity import DeviceIdentity, LocalPrekeys, RemoteBundle
    from app.protocol.session import Session

    alice = DeviceIdentity.generate()
    bob, bob_prekeys = DeviceIdentity.generate(), LocalPrekeys.generate(batch=1)
    upload = bob_prekeys.upload_json(bob)
    entry = {
        "device_id": 1,
        "identity": upload["identity"],
        "signed_prekey": upload["signed_prekey"],
        "last_resort_kem_prekey": upload["last_resort_kem_prekey"],
        "one_time_prekey": upload["one_time_prekeys"][0],
        "one_time_kem_prekey": upload["one_time_kem_prekeys"][0],
    }
    session = Session.initiate(alice, RemoteBundle.from_fetched_device(entry))
    bob_session, plaintext, _remote = Session.respond(bob, bob_prekeys, session.encrypt(b"hello"))
    if plaintext != b"hello" or session.decrypt(bob_session.encrypt(b"hi")) != b"hi":
        raise RuntimeError("the session did not round-trip")
    return "PQXDH (X25519 + ML-KEM-768) session and Double Ratchet: both directions"


def _opaque(_tmp: Path) -> CheckResult:
    from app.crypto import (
        OpaqueServerSetup,
        client_login_finish,
        client_login_start,
        client_registration_finish,
        client_registration_start,
        server_login_finish,
        server_login_start,
        server_registration_finish,
        server_registration_start,
    )

    setup = OpaqueServerSetup.generate()
    started = client_registration_start(b"pw")
    upload, _ = client_registration_finish(
        b"pw", started.state, server_registration_start(setup, started.message, b"id")
    )
    password_file = server_registration_finish(upload)
    login = client_login_start(b"pw")
    response, state = server_login_start(setup, password_file, login.message, b"id")
    finished = client_login_finish(b"pw", login.state, response)
    if server_login_finish(state, finished.finalization) != finished.session_key:
        raise RuntimeError("OPAQUE keys differ")
    return "OPAQUE (opaque-ke): registration and login agree on a session key"


def _backup(tmp: Path) -> CheckResult:
    from app.backup import engine
    from app.backup import format as fmt
    from app.crypto import Argon2Params
    from app.store import PassphraseProtector, Store

    fast = Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)
    protector = PassphraseProtector("self-test passphrase", fast)
    store = Store.open(tmp / "profile", protector)
    key = os.urandom(32)
    info = engine.write_backup(store, tmp / "cloud", key, method=fmt.METHOD_KEY)
    store.close()
    report = engine.verify_backup(info.path, key)
    result = engine.restore_backup(info.path, key, tmp / "restored", protector)
    if result.counts.get("messages") != 1:
        raise RuntimeError("the restored profile lacks the message")
    return (
        f"backup: written ({info.size:,} bytes), verified ({report.describe_contents()}), restored"
    )


def _pkcs11(_tmp: Path) -> CheckResult:
    import pkcs11

    return f"python-pkcs11 native module loads ({pkcs11.__name__})"


def _qt(_tmp: Path) -> CheckResult:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication.instance() or QApplication(sys.argv[:1])
    label = QLabel("Cipherline self-test")
    label.resize(200, 40)
    image = label.grab()
    if image.isNull():
        raise RuntimeError("Qt could not render a widget")
    platform = QApplication.platformName()
    del app
    return f"Qt: platform {platform!r} renders widgets"


CHECKS: list[tuple[str, Callable[[Path], CheckResult]]] = [
    ("store", _store),
    ("session", _session),
    ("opaque", _opaque),
    ("backup", _backup),
    ("pkcs11", _pkcs11),
    ("qt", _qt),
]


def run_self_test(out: TextIO | None = None) -> int:
    out = out or sys.stdout
    out.write(f"Cipherline {__version__} self-test\n")
    failures = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cipherline-self-test-") as tmp:
        for name, check in CHECKS:
            try:
                out.write(f"  ok    {check(Path(tmp))}\n")
            except Exception as error:  # noqa: BLE001 - every failure is reported, then counted
                failures += 1
                out.write(f"  FAIL  {name}: {type(error).__name__}: {error}\n")
            out.flush()
    verdict = "passed" if not failures else f"FAILED ({failures} check(s))"
    out.write(f"self-test {verdict} in {time.perf_counter() - started:.1f}s\n")
    return 0 if not failures else 1
