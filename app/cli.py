"""`cipherline`: the desktop app, and headless commands for scripts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app import __version__
from app.config import (
    DEFAULT_PROFILE,
    SERVER_CONFIG_NAME,
    ConfigError,
    ServerConfig,
    profile_dir,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cipherline",
        description="Cipherline: end-to-end encrypted messenger with encrypted backups.",
    )
    parser.add_argument("--version", action="version", version=f"cipherline {__version__}")
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="keep this person's data apart from other profiles on the machine",
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
    args = build_parser().parse_args(argv)
    if args.self_test:
        from app.selftest import run_self_test

        return run_self_test()
    if args.command == "backup":
        from app.backup.cli import run

        return run(args)
    try:
        profile = profile_dir(args.profile)
        if args.server_config is not None:
            ServerConfig.load(args.server_config).save(profile / SERVER_CONFIG_NAME)
    except ConfigError as error:
        print(f"cipherline: {error}", file=sys.stderr)
        return 2
    profile.mkdir(parents=True, exist_ok=True, mode=0o700)
    from app.ui.application import run_gui

    return run_gui(profile)
