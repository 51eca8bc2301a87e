"""`cipherline-vault`: provision and run a Backup Key Vault node."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from app import __version__
from app.crypto import (
    RFC9106_SECOND_RECOMMENDED,
    DecryptionError,
    aead_open,
    aead_seal,
    argon2id,
    random_bytes,
)
from vault_emulator.backends import Backend, BackendError, KeyholderRestarted, open_backend
from vault_emulator.config import BACKENDS, ConfigError, NodeConfig, read_pin, read_secret_file
from vault_emulator.etcd import EtcdClient, StorageUnavailable
from vault_emulator.keyholder import KeyholderError
from vault_emulator.keyholder import serve as serve_keyholder
from vault_emulator.node import AuditLog, FleetSecrets, RollbackDetected, VaultNode
from vault_emulator.records import EtcdRecords, RecordStore, SqliteRecords

FLEET_FILE = "fleet.sealed"
# Exit statuses: 2 the node cannot start (configuration, backend, storage), 3 its
# storage was rolled back, 4 a `memory` domain's keys are gone for good.
EXIT_FAILURE = 2
EXIT_ROLLBACK = 3
EXIT_DOMAIN_LOST = 4


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
    init.add_argument(
        "--pin-file",
        type=Path,
        default=None,
        help="file (mode 0600) holding the node's PIN: the HSM's, or the one the TPM's "
        "sealed objects are bound to (softhsm and tpm; prompted for on a terminal)",
    )
    init.add_argument("--tcti", default=None, help="TPM TCTI, e.g. swtpm:host=127.0.0.1,port=2321")
    init.add_argument(
        "--keyholder-socket",
        type=Path,
        default=None,
        help="the socket of the `keyholder` that holds a memory node's keys (memory)",
    )
    init.add_argument("--insecure-dev", action="store_true", help="allow the software backend")
    init.add_argument(
        "--join", type=Path, default=None, help="fleet file from `export-fleet` (joins that fleet)"
    )
    init.add_argument("--join-passphrase-file", type=Path, default=None)
    init.add_argument(
        "--cluster", action="append", default=[], help="etcd endpoint (repeat for a cluster)"
    )
    init.add_argument("--etcd-ca", type=Path, default=None, help="CA of the etcd members' certs")
    init.add_argument("--etcd-cert", type=Path, default=None, help="client certificate for etcd")
    init.add_argument("--etcd-key", type=Path, default=None, help="its private key")
    init.add_argument("--etcd-user", default=None, help="the vault's own etcd user")
    init.add_argument(
        "--etcd-password-file",
        type=Path,
        default=None,
        help="file (mode 0600) holding that user's password; read at every start, never copied",
    )
    export = commands.add_parser(
        "export-fleet", help="write the fleet secrets, encrypted, for a new node to join"
    )
    export.add_argument("--data", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--passphrase-file", type=Path, required=True)
    export.add_argument(
        "--pin-file", type=Path, default=None, help="file (mode 0600) holding the node's PIN"
    )
    export.add_argument("--insecure-dev", action="store_true")
    keys = commands.add_parser("public-keys", help="print the keys clients pin, as JSON")
    keys.add_argument("--data", type=Path, required=True)
    keys.add_argument(
        "--pin-file", type=Path, default=None, help="file (mode 0600) holding the node's PIN"
    )
    keys.add_argument("--insecure-dev", action="store_true")
    keyholder = commands.add_parser(
        "keyholder",
        help="hold a memory node's keys in this process's memory alone, until it exits",
    )
    keyholder.add_argument(
        "--socket", type=Path, required=True, help="UNIX socket to listen on (created 0600)"
    )
    serve = commands.add_parser("serve", help="serve the node")
    serve.add_argument("--data", type=Path, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8600)
    serve.add_argument(
        "--pin-file", type=Path, default=None, help="file (mode 0600) holding the node's PIN"
    )
    serve.add_argument("--insecure-dev", action="store_true", help="allow the software backend")
    serve.add_argument(
        "--bench-echo", action="store_true", help="also serve /v1/echo (the benchmark's baseline)"
    )
    serve.add_argument(
        "--domain",
        type=int,
        choices=(1, 2, 3),
        default=None,
        help="serve as split-vault domain N (docs/vault-protocol.md, 'The split vault')",
    )
    serve.add_argument(
        "--peer-domain",
        action="append",
        default=[],
        type=_peer_domain,
        metavar="M=HEX",
        help="another split-vault domain's fleet HPKE public key (its public-keys "
        "hpke_public_key): the only keys this domain seals a re-share term to",
    )
    return parser


def _peer_domain(text: str) -> tuple[int, bytes]:
    number, separator, key = text.partition("=")
    try:
        if not separator or number not in {"1", "2", "3"}:
            raise ValueError
        return int(number), bytes.fromhex(key)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected M=HEX with M 1, 2 or 3, got {text!r}") from None


def _peers(domain: int | None, pairs: list[tuple[int, bytes]]) -> dict[int, bytes]:
    peers = dict(pairs)
    if peers and domain is None:
        raise ConfigError("--peer-domain needs --domain: which domain this node serves")
    if domain in peers or len(peers) != len(pairs):
        raise ConfigError("each peer domain once, and not this node's own")
    return peers


def _refuse_soft_without_flag(backend: str, insecure_dev: bool) -> None:
    if backend == "soft" and not insecure_dev:
        raise ConfigError(
            "the 'soft' backend keeps keys in software and is for development only; "
            "pass --insecure-dev to use it anyway"
        )


def _pin(config: NodeConfig, pin_file: Path | None) -> str | None:
    """The node's PIN, from its file or typed at a terminal; never from the environment."""
    if config.backend not in ("softhsm", "tpm"):
        return None
    if pin_file is None and sys.stdin.isatty():
        import getpass

        pin = getpass.getpass(f"PIN for the {config.backend} backend of {config.node_name}: ")
        if not pin:
            raise ConfigError("no PIN given")
        return pin
    return read_pin(pin_file)


def _open(
    data: Path, pin_file: Path | None, insecure_dev: bool
) -> tuple[NodeConfig, Backend, FleetSecrets]:
    config = NodeConfig.load(data)
    _refuse_soft_without_flag(config.backend, insecure_dev)
    backend = open_backend(config, data, _pin(config, pin_file), create=False)
    try:
        secrets = FleetSecrets.from_bytes(backend.unseal((data / FLEET_FILE).read_bytes()))
    except FileNotFoundError:
        raise ConfigError(f"{data} has no fleet secrets; run init") from None
    return config, backend, secrets


_ETCD_FILES = ("etcd_ca", "etcd_cert", "etcd_key", "etcd_password_file")


def _etcd_extra(args: argparse.Namespace) -> dict[str, str]:
    """What `init` records about etcd: endpoints, file paths and a user name, no secret."""
    extra = {"cluster": ",".join(args.cluster)} if args.cluster else {}
    # Absolute, so `serve` finds them from any directory; not resolved, so a
    # symlinked secret that is rotated by swapping its target keeps working.
    for name in _ETCD_FILES:
        if getattr(args, name) is not None:
            extra[name] = str(getattr(args, name).absolute())
    if args.etcd_user:
        extra["etcd_user"] = args.etcd_user
    if extra and not args.cluster:
        raise ConfigError("the --etcd-* options need --cluster")
    if args.cluster:
        _etcd_client(extra)  # refuse a bad password file or half a key pair now, not at serve
    return extra


def _keyholder_socket(args: argparse.Namespace) -> str | None:
    if args.backend != "memory":
        if args.keyholder_socket is not None:
            raise ConfigError("--keyholder-socket is for the memory backend")
        return None
    if args.keyholder_socket is None:
        raise ConfigError("the memory backend needs --keyholder-socket (a running keyholder's)")
    # Absolute, so that `serve` finds it from any directory.
    return str(args.keyholder_socket.absolute())


def _etcd_client(extra: dict[str, str]) -> EtcdClient:
    def path(key: str) -> Path | None:
        return Path(extra[key]) if extra.get(key) else None

    return EtcdClient(
        [e for e in extra.get("cluster", "").split(",") if e],
        ca_file=path("etcd_ca"),
        cert_file=path("etcd_cert"),
        key_file=path("etcd_key"),
        user=extra.get("etcd_user") or None,
        password_file=path("etcd_password_file"),
    )


def _records(config: NodeConfig, data: Path) -> RecordStore:
    cluster = [e for e in config.extra.get("cluster", "").split(",") if e]
    if not cluster:
        return SqliteRecords(data / "records.sqlite3")
    return EtcdRecords(_etcd_client(config.extra))


def _export_key(passphrase: bytes, salt: bytes) -> bytes:
    return argon2id(passphrase, salt, RFC9106_SECOND_RECOMMENDED)


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
                keyholder_socket=_keyholder_socket(args),
                extra=_etcd_extra(args),
            )
            args.data.mkdir(parents=True, exist_ok=True, mode=0o700)
            backend = open_backend(config, args.data, _pin(config, args.pin_file), create=True)
            if config.backend == "memory":
                config = dataclasses.replace(
                    config, keyholder_public_key=backend.signing_public_key().hex()
                )
            if args.join is not None:
                if args.join_passphrase_file is None:
                    raise ConfigError("--join needs --join-passphrase-file")
                blob = args.join.read_bytes()
                key = _export_key(
                    read_secret_file(args.join_passphrase_file, "passphrase").encode(), blob[:16]
                )
                try:
                    secrets = FleetSecrets.from_bytes(
                        aead_open(key, blob[16:28], blob[28:], b"cipherline fleet export")
                    )
                except DecryptionError:
                    raise ConfigError("the fleet file or its passphrase is wrong") from None
            else:
                secrets = FleetSecrets.generate()
            sealed = backend.seal(secrets.to_bytes())
            path = args.data / FLEET_FILE
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(sealed)
                handle.flush()
                os.fsync(handle.fileno())
            counter = backend.monotonic_counter()
            if counter is not None:
                VaultNode.initialize_witness(
                    _records(config, args.data), secrets, config.node_name, counter
                )
            config.save(args.data)
            backend.close()
            print(f"provisioned {config.node_name} on backend {config.backend} in {args.data}")
            return 0
        if args.command == "export-fleet":
            _config, backend, secrets = _open(args.data, args.pin_file, args.insecure_dev)
            salt, nonce = random_bytes(16), random_bytes(12)
            key = _export_key(read_secret_file(args.passphrase_file, "passphrase").encode(), salt)
            sealed = aead_seal(key, nonce, secrets.to_bytes(), b"cipherline fleet export")
            args.out.write_bytes(salt + nonce + sealed)
            os.chmod(args.out, 0o600)
            backend.close()
            print(f"wrote the encrypted fleet secrets to {args.out}")
            return 0
        if args.command == "public-keys":
            config, backend, secrets = _open(args.data, args.pin_file, args.insecure_dev)
            print(
                json.dumps(
                    {
                        "node": config.node_name,
                        "hpke_public_key": secrets.hpke_private.public_key().to_bytes().hex(),
                        "signing_public_key": backend.signing_public_key().hex(),
                    }
                )
            )
            backend.close()
            return 0
        if args.command == "keyholder":
            return serve_keyholder(args.socket)
        if args.command == "serve":
            import uvicorn

            from vault_emulator.server import create_app

            peers = _peers(args.domain, args.peer_domain)
            config, backend, secrets = _open(args.data, args.pin_file, args.insecure_dev)
            node = VaultNode(
                config.node_name,
                backend,
                secrets,
                _records(config, args.data),
                AuditLog(args.data / "audit.log", config.node_name),
                domain=args.domain,
                peers=peers,
            )
            migrated = node.migrate_legacy()
            if migrated:
                logging.getLogger("vault").info("moved %d version 1 records to version 2", migrated)
            uvicorn.run(
                create_app(config, node, insecure=config.backend == "soft", echo=args.bench_echo),
                host=args.host,
                port=args.port,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=2,
            )
            return 0
    except KeyholderRestarted as error:
        print(f"cipherline-vault: {error}", file=sys.stderr)
        return EXIT_DOMAIN_LOST
    except (ConfigError, BackendError, KeyholderError) as error:
        print(f"cipherline-vault: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except RollbackDetected as error:
        print(f"cipherline-vault: refusing to serve: {error}", file=sys.stderr)
        return EXIT_ROLLBACK
    except StorageUnavailable as error:
        print(f"cipherline-vault: the record store is unavailable: {error}", file=sys.stderr)
        return EXIT_FAILURE
    return 0
