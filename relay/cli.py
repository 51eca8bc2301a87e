"""`cipherline-relay`: run the relay."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import __version__

if TYPE_CHECKING:
    from relay.connections import ConnectionLimits


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
        "--vault-domain",
        action="append",
        default=[],
        metavar="N=URL",
        type=vault_domain,
        help="a node of split-vault domain N (1-3), for /v1/vault/domains/N/ "
        "(repeat for each node of each domain)",
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
        "--sealed-rate",
        type=_positive_number,
        default=None,
        metavar="PER_SECOND",
        help="sealed sends per second per delivery token (or per recipient device that takes "
        "sealed mail from anyone), and sealed send requests per connection (default: 20.0)",
    )
    serve.add_argument(
        "--sealed-burst",
        type=_burst,
        default=None,
        metavar="N",
        help="how many of those may come at once before --sealed-rate applies (default: 100.0)",
    )
    serve.add_argument(
        "--bench-echo", action="store_true", help="also serve /v1/bench/echo (benchmark baseline)"
    )
    add_quota_flags(serve)
    add_connection_limit_flags(serve)
    return parser


# ---- connection limits (relay/connections.py) -----------------------------------
# Serve options, not RelaySettings: they are the listener's, not the app's. The
# defaults are ConnectionLimits's (tests/relay/test_connection_limits.py checks).


def vault_domain(text: str) -> tuple[int, str]:
    number, separator, url = text.partition("=")
    if not separator or number not in {"1", "2", "3"} or not url.startswith("http"):
        raise argparse.ArgumentTypeError(f"expected N=URL with N 1, 2 or 3, got {text!r}")
    return int(number), url


def vault_domains(pairs: list[tuple[int, str]]) -> dict[int, tuple[str, ...]]:
    domains: dict[int, tuple[str, ...]] = {}
    for number, url in pairs:
        domains[number] = (*domains.get(number, ()), url)
    return domains


def _positive_number(text: str) -> float:
    value = float(text)
    # A zero rate would refuse every sealed send for good; NaN and infinity no bucket means.
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _burst(text: str) -> float:
    value = _positive_number(text)
    # A send takes a whole token: a bucket that never holds one refuses them all.
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def sealed_rate_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The RelaySettings fields of the sealed-send flags that were given: sealed
    sends carry no account, so these buckets are the relay's only brake on them
    besides the address bucket (docs/relay-api.md, "Rate limits"). Floats; Any
    because they are passed on as keywords beside fields of other types."""
    chosen = {"sealed_rate_per_second": args.sealed_rate, "sealed_rate_burst": args.sealed_burst}
    return {field: value for field, value in chosen.items() if value is not None}


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _count_or_zero(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_connection_limit_flags(serve: argparse.ArgumentParser) -> None:
    limits = serve.add_argument_group(
        "connection limits", "see docs/relay-api.md, section 'Connection limits'"
    )
    limits.add_argument(
        "--handshake-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose TLS handshake is not done in this time (default: 10)",
    )
    limits.add_argument(
        "--header-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="close a connection whose request headers are not complete this long after "
        "its handshake (or after its previous response, if longer than the keep-alive "
        "timeout) (default: 10)",
    )
    limits.add_argument(
        "--keep-alive-timeout",
        type=_count,
        default=5,
        metavar="SECONDS",
        help="close a connection that sends nothing this long after a response (default: 5)",
    )
    limits.add_argument(
        "--max-connections",
        type=_count,
        default=10_000,
        metavar="N",
        help="connections held at once from all addresses, push included; at the cap the "
        "oldest idle one makes room (default: 10000, lowered to fit the open-files limit)",
    )
    limits.add_argument(
        "--max-connections-per-address",
        type=_count,
        default=256,
        metavar="N",
        help="connections held at once from one IPv4 address or IPv6 /64 (default: 256)",
    )
    limits.add_argument(
        "--refusal-slots",
        type=_count_or_zero,
        default=64,
        metavar="N",
        help="connections over a cap answered 503 at once, a 16th of them per address; "
        "the rest are closed before TLS (default: 64)",
    )
    limits.add_argument(
        "--max-header-bytes",
        type=_count,
        default=64 * 1024,
        metavar="BYTES",
        help="larger request line and headers are answered 431 (default: 65536)",
    )
    limits.add_argument(
        "--tls-shutdown-timeout",
        type=_seconds,
        default=3.0,
        metavar="SECONDS",
        help="longest wait for the peer's TLS close_notify when closing (default: 3)",
    )


def connection_limits(args: argparse.Namespace) -> ConnectionLimits:
    from relay.connections import ConnectionLimits

    return ConnectionLimits(
        handshake_timeout=args.handshake_timeout,
        header_timeout=args.header_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        max_connections=args.max_connections,
        max_per_address=args.max_connections_per_address,
        refusal_slots=args.refusal_slots,
        max_header_bytes=args.max_header_bytes,
        tls_shutdown_timeout=args.tls_shutdown_timeout,
    )


# ---- end of connection limits ----------------------------------------------------


# ---- request limits and quotas (RelaySettings) ----------------------------------
# Each flag left out keeps RelaySettings's default, the one its help names
# (tests/relay/test_relay_abuse.py checks they agree).

QUOTA_FLAGS: tuple[tuple[str, str, str], ...] = (
    # (flag, RelaySettings field, help)
    (
        "--max-request-bytes",
        "max_request_bytes",
        "largest body of a JSON request not named below: accounts, devices, "
        "acknowledgements (default: 65536)",
    ),
    (
        "--max-send-request-bytes",
        "max_send_request_bytes",
        "largest body of a send (POST /v1/messages) (default: 16777216)",
    ),
    (
        "--max-devices",
        "max_devices_per_account",
        "active devices one account may have (default: 5)",
    ),
    (
        "--max-one-time-prekeys",
        "max_one_time_prekeys",
        "one-time prekeys a device may store, of each kind (default: 1000)",
    ),
    (
        "--mailbox-max-envelopes",
        "mailbox_quota",
        "envelopes waiting in one device's mailbox (default: 10000)",
    ),
    (
        "--mailbox-max-bytes",
        "mailbox_quota_bytes",
        "bytes of envelopes waiting in one device's mailbox (default: 104857600)",
    ),
    (
        "--attachment-bytes-per-day",
        "attachment_bytes_per_day",
        "attachment bytes one account may upload in any 24 hours (default: 1073741824)",
    ),
    (
        "--prekey-fetches-per-requester",
        "prekey_fetches_per_requester",
        "fetches of one account's keys per hour that hand one requesting account "
        "one-time prekeys (default: 5)",
    ),
    (
        "--prekey-handouts-per-account",
        "prekey_handouts_per_account",
        "fetches of one account's keys per hour that hand out one-time prekeys, "
        "to everyone together (default: 50)",
    ),
    (
        "--max-link-mailboxes",
        "max_link_mailboxes",
        "link mailboxes (linking a new device) open at once, in all (default: 1000)",
    ),
    (
        "--link-mailbox-ms",
        "link_mailbox_ms",
        "how long a link mailbox stays open, in milliseconds (default: 600000)",
    ),
)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_quota_flags(serve: argparse.ArgumentParser) -> None:
    quotas = serve.add_argument_group(
        "request limits and quotas", "see docs/relay-api.md, section 'Limits and quotas'"
    )
    for flag, _field, text in QUOTA_FLAGS:
        quotas.add_argument(flag, type=_positive, default=None, metavar="N", help=text)


def quota_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The RelaySettings fields of the quota flags that were given (all ints; Any
    because they are passed on as keywords beside fields of other types)."""
    chosen = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _ in QUOTA_FLAGS}
    return {field: value for field, value in chosen.items() if value is not None}


# ---- end of request limits and quotas --------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.command == "serve":
        from relay.connections import serve as serve_with_limits
        from relay.server import RelaySettings, create_app
        from relay.storage import private_directory
        from relay.tls import ensure_tls_files

        private_directory(args.data)
        try:
            settings = RelaySettings(
                data_dir=args.data,
                database_url=args.database,
                vault_urls=tuple(args.vault),
                vault_domains=vault_domains(args.vault_domain),
                max_attachment_bytes=args.max_attachment_bytes,
                rate_per_second=args.rate,
                rate_burst=args.rate * 4,
                address_rate_per_second=args.address_rate,
                address_rate_burst=args.address_rate * 4,
                bench_echo=args.bench_echo,
                **sealed_rate_settings(args),
                **quota_settings(args),
            )
        except ValueError as error:
            raise SystemExit(f"cipherline-relay serve: {error}") from None
        tls = ensure_tls_files(args.data, args.hostname)
        application = create_app(settings)
        serve_with_limits(
            application,
            connection_limits(args),
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
