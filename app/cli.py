"""`cipherline`: the desktop app, and headless commands for scripts.

Exit codes of the desktop app are in `EXIT_CODES_HELP`, which `--help` prints;
the `backup` commands list their own in `cipherline backup --help`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from app import __version__
from app.config import (
    DEFAULT_PROFILE,
    HOME_ENV,
    SERVER_CONFIG_NAME,
    ConfigError,
    ServerConfig,
    data_root,
    ensure_profile_dir,
)

EXIT_NO_DISPLAY = 2
EXIT_CODES_HELP = """\
exit codes of the desktop app:
  0   it was closed (or --self-test passed)
  1   --self-test found a problem
  2   it cannot start: a bad profile name or server config, or no display

The backup commands have their own: cipherline backup --help"""
NO_DISPLAY_MESSAGE = (
    "cipherline: no display found (DISPLAY/WAYLAND_DISPLAY unset): run it in a desktop"
    " session, or use the headless commands: cipherline backup …, cipherline --self-test"
)
# Qt platform plugins that need no display server.
_HEADLESS_PLATFORMS = frozenset(
    {"offscreen", "minimal", "minimalegl", "vnc", "eglfs", "linuxfb", "vkkhrdisplay"}
)
# Everything the app writes is the user's alone (app/config.py, app/store).
APP_UMASK = 0o077


def has_display(environ: Mapping[str, str] | None = None) -> bool:
    """Whether Qt can show a window here. Checked before a QApplication exists,
    because Qt's own failure (a missing xcb library, "reinstalling may fix this")
    aborts the process and points at the wrong cause. Only X11/Wayland systems
    need a display server; elsewhere the answer is always yes."""
    if not sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return True
    env = os.environ if environ is None else environ
    platforms = [
        name.split(":", 1)[0].strip().lower()
        for name in env.get("QT_QPA_PLATFORM", "").split(";")
        if name.strip()
    ]
    if any(name in _HEADLESS_PLATFORMS for name in platforms):
        return True
    x11, wayland = bool(env.get("DISPLAY")), bool(env.get("WAYLAND_DISPLAY"))
    if not platforms:
        return x11 or wayland
    return any(
        (name == "xcb" and x11) or (name.startswith("wayland") and wayland) for name in platforms
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cipherline",
        description="Cipherline: end-to-end encrypted messenger with encrypted backups.",
        epilog=(
            f"{EXIT_CODES_HELP}\n\nEach profile is a folder in {data_root() / 'profiles'};"
            f"\nset {HOME_ENV} to keep them somewhere else."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cipherline {__version__}")
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help=(
            "a local name for this person's data on this machine, not their username"
            " (default: default)"
        ),
    )
    parser.add_argument(
        "--server-config",
        type=Path,
        default=None,
        help="JSON file naming the relay, its CA and the vault keys; copied into the profile",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check the store, encryption, backups and Qt in a temporary directory, then exit",
    )
    commands = parser.add_subparsers(dest="command")
    from app.backup.cli import add_parser

    add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    previous = os.umask(APP_UMASK)
    try:
        return _run(build_parser().parse_args(argv))
    finally:
        # The app has ended by now; this only matters to a caller in the same process.
        os.umask(previous)


def _run(args: argparse.Namespace) -> int:
    if args.self_test:
        from app.selftest import run_self_test

        return run_self_test()
    if args.command == "backup":
        from app.backup.cli import run

        return run(args)
    if not has_display():
        print(NO_DISPLAY_MESSAGE, file=sys.stderr)
        return EXIT_NO_DISPLAY
    try:
        profile = ensure_profile_dir(args.profile)
        if args.server_config is not None:
            ServerConfig.load(args.server_config).save(profile / SERVER_CONFIG_NAME)
    except ConfigError as error:
        print(f"cipherline: {error}", file=sys.stderr)
        return 2
    from app.ui.application import run_gui

    return run_gui(profile)
