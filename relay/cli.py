"""`cipherline-relay`: run the relay."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from app import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cipherline-relay",
        description="Cipherline relay: stores and forwards end-to-end encrypted envelopes.",
    )
    parser.add_argument("--version", action="version", version=f"cipherline-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the relay over HTTPS")
    serve.add_argument(
        "--data", type=Path, required=True, help="data directory (TLS files, SQLite)"
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: loopback)"
    )
    serve.add_argument("--port", type=int, default=8443)
    serve.add_argument(
        "--database",
        default=None,
        help="postgresql://… to share state between relay instances (default: SQLite in --data)",
    )
    serve.add_argument(
        "--hostname", action="append", default=[], help="extra name for the certificate"
    )
    serve.add_argument(
        "--vault",
        action="append",
        default=[],
        help="URL of a Backup Key Vault node to pass vault requests to (repeat for a fleet)",
    )
    serve.add_argument(
        "--max-attachment-bytes",
        type=int,
        default=100 * 1024 * 1024,
        help="largest attachment accepted (default: 100 MB)",
    )
    serve.add_argument(
        "--rate",
        type=float,
        default=50.0,
        help="requests per second allowed per account (burst: 4x)",
    )
    serve.add_argument(
        "--address-rate",
        type=float,
        default=1000.0,
        help="requests per second allowed per client address, all accounts together (burst: 4x)",
    )
    serve.add_argument(
        "--bench-echo", action="store_true", help="also serve /v1/bench/echo (benchmark baseline)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "serve":
        import uvicorn

        from relay.server import RelaySettings, create_app
        from relay.tls import ensure_tls_files

        args.data.mkdir(parents=True, exist_ok=True)
        tls = ensure_tls_files(args.data, args.hostname)
        application = create_app(
            RelaySettings(
                data_dir=args.data,
                database_url=args.database,
                vault_urls=tuple(args.vault),
                max_attachment_bytes=args.max_attachment_bytes,
                rate_per_second=args.rate,
                rate_burst=args.rate * 4,
                address_rate_per_second=args.address_rate,
                address_rate_burst=args.address_rate * 4,
                bench_echo=args.bench_echo,
            )
        )
        uvicorn.run(
            application,
            host=args.host,
            port=args.port,
            ssl_certfile=str(tls.server_cert),
            ssl_keyfile=str(tls.server_key),
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            # Push frames carry ciphertext, which does not compress.
            ws_per_message_deflate=False,
        )
    return 0
