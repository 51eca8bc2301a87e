"""Password backups through the relay to a real vault node on SoftHSM2, and the CLI."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from app.backup import engine, service
from app.backup.errors import ProfileNotEmpty
from app.backup.keys import format_key
from app.cli import main
from app.config import SERVER_CONFIG_NAME, ServerConfig, VaultNodeKey, profile_dir
from app.store import Store
from tests.backup.conftest import SECRET_TEXT, populate
from tests.store.conftest import PASSPHRASE, protector
from tests.support.components import RelayProcess, VaultProcess

PASSWORD = "walrus lantern backup sepia fjord"


@pytest.fixture
def server_config(
    vault_node: VaultProcess, relay_factory: Callable[..., RelayProcess]
) -> ServerConfig:
    relay = relay_factory(extra_args=["--vault", vault_node.url])
    keys = vault_node.public_keys()
    return ServerConfig(relay.url, relay.ca_file.read_text(), (VaultNodeKey(**keys),))


def _profile(name: str, config: ServerConfig) -> Path:
    path = profile_dir(name)
    path.mkdir(parents=True)
    config.save(path / SERVER_CONFIG_NAME)
    return path


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = ""
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_password_backup_restore_change_and_turn_off(
    server_config: ServerConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    profile = _profile("alice", server_config)
    store = Store.create(profile, protector())
    populate(store, profile)
    access = service.VaultAccess(server_config, profile)
    folder = tmp_path / "Nextcloud" / "Cipherline"
    service.set_up_with_password(store, access, PASSWORD, folder)
    info = service.back_up_now(store, profile)
    store.close()
    assert info.method == "password" and len(info.record_id) == 16

    code, out, _err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "now",
        "--profile",
        "alice",
        "--passphrase-stdin",
        stdin=PASSPHRASE + "\n",
    )
    assert code == 0 and "backup written" in out
    code, out, _ = _cli(
        monkeypatch,
        capsys,
        "backup",
        "status",
        "--profile",
        "alice",
        "--passphrase-stdin",
        stdin=PASSPHRASE + "\n",
    )
    assert code == 0 and "method: password" in out and "2 backup(s)" in out, _

    code, _out, err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "verify",
        "--profile",
        "alice",
        "--folder",
        str(folder),
        "--password-stdin",
        stdin="wrong password\n",
    )
    assert code == 3 and "9 attempts left" in err, err
    code, out, _ = _cli(
        monkeypatch,
        capsys,
        "backup",
        "verify",
        "--profile",
        "alice",
        "--folder",
        str(folder),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert code == 0 and out.startswith("OK:")

    # Restore into a fresh profile (it has only the server config, like a new machine).
    _profile("alice-restored", server_config)
    code, out, err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "restore",
        "--profile",
        "alice-restored",
        "--folder",
        str(folder),
        "--passphrase-stdin",
        "--password-stdin",
        stdin=f"new local passphrase\n{PASSWORD}\n",
    )
    assert code == 0, err
    assert "restored 50 messages and 2 attachments" in out
    code, _out, err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "restore",
        "--profile",
        "alice-restored",
        "--folder",
        str(folder),
        "--passphrase-stdin",
        "--password-stdin",
        stdin=f"x\n{PASSWORD}\n",
    )
    assert code == ProfileNotEmpty.exit_code == 8, err
    assert "already holds an account" in err

    # A new password opens the same backups; the old one no longer does.
    store = Store.open(profile, protector())
    service.change_password(store, access, PASSWORD, "kestrel oxbow velvet pilot drizzle")
    assert service.key_for(info, password="kestrel oxbow velvet pilot drizzle", access=access)
    # Turning backups off makes the vault forget the key.
    service.turn_off(store, access, "kestrel oxbow velvet pilot drizzle")
    assert store.backup_state.get().method is None
    store.close()
    code, _out, err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "verify",
        "--profile",
        "alice",
        "--file",
        str(info.path),
        "--password-stdin",
        stdin="kestrel oxbow velvet pilot drizzle\n",
    )
    assert code == 10 and "holds no key" in err


def test_key_backup_cli_errors_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = profile_dir("bob")
    store = Store.create(profile, protector())
    populate(store, profile, attachment_bytes=10_000)
    folder = tmp_path / "Dropbox"
    key = service.set_up_with_key(store, folder)
    info = service.back_up_now(store, profile)
    store.close()
    shown = format_key(key)
    code, out, _ = _cli(
        monkeypatch,
        capsys,
        "backup",
        "verify",
        "--file",
        str(info.path),
        "--key",
        "-",
        stdin=shown.upper() + "\n",
    )
    assert code == 0 and "OK" in out
    code, _, err = _cli(
        monkeypatch, capsys, "backup", "verify", "--file", str(info.path), "--key", shown[:-1]
    )
    assert code == 2 and "that key is not valid" in err
    code, _, err = _cli(
        monkeypatch, capsys, "backup", "verify", "--file", str(info.path), "--key", "0" * 64
    )
    assert code == 3 and "does not open this backup" in err
    data = bytearray(info.path.read_bytes())
    data[len(data) // 2] ^= 1
    damaged = tmp_path / "damaged.clbk"
    damaged.write_bytes(bytes(data))
    code, _, err = _cli(
        monkeypatch, capsys, "backup", "verify", "--file", str(damaged), "--key", shown
    )
    assert code == 5 and "damaged or cut short at byte" in err
    # The progress line is ended first: the error stands on a line of its own.
    assert err.splitlines()[-1].startswith("cipherline backup: "), repr(err)
    code, _, err = _cli(monkeypatch, capsys, "backup", "verify", "--file", str(info.path))
    assert code == 2 and "pass --key" in err
    # Nothing secret lands in the folder in the clear.
    for path in (p for p in folder.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        assert SECRET_TEXT.encode() not in raw and key not in raw and shown.encode() not in raw
    assert [b.path for b in engine.list_backups(folder)] == [info.path]
