"""Issue #24, the command line: `--help` lists the exit codes and the order of the
secrets on stdin, that order holds for every action, a passphrase profile names
`--passphrase-stdin` when it is missing, and sizes use binary units (the same
function the desktop app uses)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from app.backup import service
from app.backup.keys import format_key
from app.cli import main
from app.config import profile_dir
from app.sizes import format_size
from app.store import PassphraseProtector, Store
from tests.backup.conftest import populate
from tests.store.conftest import PASSPHRASE, protector


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = ""
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _backed_up(tmp_path: Path) -> tuple[Path, Path, bytes]:
    profile = profile_dir("alice")
    store = Store.create(profile, protector())
    populate(store, profile, messages=5, attachment_bytes=30_000)
    folder = tmp_path / "Dropbox"
    key = service.set_up_with_key(store, folder)
    service.back_up_now(store, profile)
    store.close()
    return profile, folder, key


def test_help_lists_exit_codes_and_the_stdin_order(capsys: pytest.CaptureFixture[str]) -> None:
    top = _help(capsys)
    assert "exit codes of the desktop app:" in top
    assert re.search(r"^\s+2\s+it cannot start", top, re.MULTILINE)
    for argv in (("backup",), ("backup", "status"), ("backup", "restore")):
        text = _help(capsys, *argv)
        assert "exit codes:" in text, argv
        for code, words in ((3, "wrong key or password"), (8, "not empty"), (10, "vault")):
            assert re.search(rf"^\s+{code}\s+.*{words}", text, re.MULTILINE), (argv, code)
        assert "1. the profile's local passphrase" in text
        assert "2. the backup key or backup password" in text


def test_a_passphrase_profile_names_the_missing_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _backed_up(tmp_path)
    code, _out, err = _cli(monkeypatch, capsys, "backup", "status", "--profile", "alice")
    assert code == 2, err
    assert "protected by a passphrase" in err and "--passphrase-stdin" in err
    code, _out, err = _cli(monkeypatch, capsys, "backup", "now", "--profile", "alice")
    assert code == 2 and "--passphrase-stdin" in err
    code, out, err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "status",
        "--profile",
        "alice",
        "--passphrase-stdin",
        stdin=PASSPHRASE + "\n",
    )
    assert code == 0, err
    assert re.search(r"last backup: .* \(\d[\d.,]* KiB\)", out), out
    assert re.search(r"\d KiB\s+64-digit key", out), out
    assert " KB" not in out and "MB" not in out


def test_passphrase_first_then_key_for_every_action(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _profile, folder, key = _backed_up(tmp_path)
    shown = format_key(key)
    # verify opens no profile, but the order is the same: the passphrase line first.
    code, out, err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "verify",
        "--folder",
        str(folder),
        "--passphrase-stdin",
        "--key",
        "-",
        stdin=f"not needed here\n{shown}\n",
    )
    assert code == 0 and out.startswith("OK:"), err
    assert re.search(r"\d KiB, every chunk authentic", out), out

    # Swapped lines: the key line is taken as the passphrase and the passphrase
    # as the key, which is refused before anything is written.
    code, _out, err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "restore",
        "--profile",
        "swapped",
        "--folder",
        str(folder),
        "--passphrase-stdin",
        "--key",
        "-",
        stdin=f"{shown}\nnew local passphrase\n",
    )
    assert code == 2 and "that key is not valid" in err
    assert not Store.exists(profile_dir("swapped"))

    code, out, err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "restore",
        "--profile",
        "restored",
        "--folder",
        str(folder),
        "--passphrase-stdin",
        "--key",
        "-",
        stdin=f"new local passphrase\n{shown}\n",
    )
    assert code == 0, err
    Store.open(profile_dir("restored"), PassphraseProtector("new local passphrase")).close()


def test_key_and_password_exclude_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _profile, folder, key = _backed_up(tmp_path)
    code, _out, err = _cli(
        monkeypatch,
        capsys,
        "backup",
        "verify",
        "--folder",
        str(folder),
        "--key",
        format_key(key),
        "--password-stdin",
        stdin="a password\n",
    )
    assert code == 2 and "either --key or --password-stdin" in err


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 bytes"),
        (1, "1 byte"),
        (1023, "1,023 bytes"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (2**20 - 1, "1.0 MiB"),
        (5 * 2**20 + 2**19, "5.5 MiB"),
        (3 * 2**30, "3.0 GiB"),
        (2**40, "1.0 TiB"),
    ],
)
def test_sizes_use_binary_units_under_their_names(size: int, text: str) -> None:
    assert format_size(size) == text
