"""`cipherline-vault`: provision and run a Backup Key Vault node."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from app import __version__
from vault_emulator.config import BACKENDS, ConfigError, NodeConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cipherline-vault",
        description="Cipherline Backup Key Vault emulator node.",
    )
    parser.add_argument("--version", action="version", version=f"cipherline-vault {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="provision a node on a backend")
    init.add_argument("--backend", choices=BACKENDS, required=True)
    init.add_argument("--data", type=Path, required=True)
    init.add_argument("--node-name", default="node-1")
    init.add_argument("--pkcs11-lib", default="/usr/lib/softhsm/libsofthsm2.so")
    init.add_argument("--token-label", default="cipherline-vault")
    init.add_argument("--pin-file", type=Path, default=None)
    init.add_argument("--tcti", default=None, help="TPM TCTI, e.g. swtpm:host=127.0.0.1,port=2321")
    init.add_argument("--insecure-dev", action="store_true", help="allow the software backend")

    serve = commands.add_parser("serve", help="serve the node")
    serve.add_argument("--data", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8600)
    serve.add_argument("--pin-file", type=Path, default=None)
    serve.add_argument("--insecure-dev", action="store_true", help="allow the software backend")
    return parser


def _refuse_soft_without_flag(backend: str, insecure_dev: bool) -> None:
    if backend == "soft" and not insecure_dev:
        raise ConfigError(
            "the 'soft' backend keeps keys in software and is for development only; "
            "pass --insecure-dev to use it anyway"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        if args.command == "init":
            _refuse_soft_without_flag(args.backend, args.insecure_dev)
            config = NodeConfig(
                backend=args.backend,
                node_name=args.node_name,
                pkcs11_library=args.pkcs11_lib if args.backend == "softhsm" else None,
                token_label=args.token_label if args.backend == "softhsm" else None,
                tpm_tcti=args.tcti if args.backend == "tpm" else None,
            )
            config.save(args.data)
            print(f"provisioned {config.node_name} on backend {config.backend} in {args.data}")
            return 0
        if args.command == "serve":
            import uvicorn

            from vault_emulator.server import create_app

            config = NodeConfig.load(args.data)
            _refuse_soft_without_flag(config.backend, args.insecure_dev)
            uvicorn.run(
                create_app(config, insecure=config.backend == "soft"),
                host=args.host,
                port=args.port,
                log_level="warning",
                access_log=False,
            )
            return 0
    except ConfigError as error:
        print(f"cipherline-vault: {error}", file=sys.stderr)
        return 2
    return 0
