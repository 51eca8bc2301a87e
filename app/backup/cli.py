"""`cipherline backup now|verify|restore|status|list|prune`: backups for scripts.

The exit codes and the order of the secrets on stdin are in `STDIN_HELP` and
`EXIT_CODES_HELP`, which `--help` prints: documentation a script's author can
read without the source. Secrets come from stdin, never from arguments, except
`--key` which also accepts `-` for stdin.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from app.backup import engine, service, snapshots
from app.backup.errors import BackupError, BackupNotConfigured, NotABackup, ProfileNotEmpty
from app.backup.keys import parse_key
from app.config import SERVER_CONFIG_NAME, ConfigError, ServerConfig, profile_dir
from app.protocol.vault import LockedOut, VaultError, WrongPassword
from app.sizes import format_size
from app.store import Store, StoreError, keyring_usable
from app.store.database import RESTORED_DEVICE_SETTING, RESTORED_TAKE_OVER
from app.store.keyfile import KeyringProtector, PassphraseProtector, Protector

VAULT_EXIT = 10
EXIT_CODES_HELP = """\
exit codes:
  0   success
  1   anything else (no such profile, a file that cannot be read or written, ...)
  2   bad usage, an invalid key, or a secret missing from stdin
  3   wrong key or password
  4   not a backup, or no backup in the folder
  5   damaged backup
  6   cancelled
  7   not enough space
  8   the target profile is not empty
  9   backups are not set up for this profile
  10  the vault refused (locked out, unreachable, no such key)
  prune also exits 1 when another backup or prune holds the folder's lock"""
STDIN_HELP = """\
secrets on stdin, one per line, in this order:
  1. the profile's local passphrase      (--passphrase-stdin)
  2. the backup key or backup password   (--key - or --password-stdin)
  A profile protected by the system keyring needs no passphrase line; then the
  key or password is the first line. --key - and --password-stdin exclude each
  other: a backup is opened by one or the other."""


class UsageError(BackupError):
    """Something the command line must say and did not: exit 2, like argparse."""

    exit_code = 2


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    epilog = f"{STDIN_HELP}\n\n{EXIT_CODES_HELP}"
    backup = commands.add_parser(
        "backup",
        help="make, check and restore encrypted backups",
        description="Make, check and restore encrypted backups.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = backup.add_subparsers(dest="action", required=True)
    for name, text in (
        ("now", "back up this profile now, with its configured method and folder"),
        ("verify", "decrypt and check every chunk of a backup; writes nothing"),
        ("restore", "restore a backup into a new, empty profile"),
        ("status", "show the backup settings and the backups found"),
        ("list", "list the backups in the folder: date, size added, total size"),
        ("prune", "delete the snapshots the keep rules no longer keep, and what only they used"),
    ):
        action = actions.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        action.add_argument(
            "--profile",
            dest="backup_profile",
            default=None,
            help="the local profile name, as in `make run PROFILE=...` (default: default)",
        )
        action.add_argument("--folder", type=Path, default=None, help="the backup folder")
        action.add_argument("--file", type=Path, default=None, help="one backup file")
        action.add_argument(
            "--key", default=None, help="the 64-digit key, or - to read it from stdin"
        )
        action.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the backup password from stdin (after the passphrase, if both)",
        )
        action.add_argument(
            "--passphrase-stdin",
            action="store_true",
            help="read the profile's local passphrase from stdin (always the first line)",
        )
        action.add_argument(
            "--server-config",
            # Not "server_config": a subcommand's default would overwrite the value
            # of `cipherline --server-config PATH backup ...`, which also works.
            dest="action_server_config",
            type=Path,
            default=None,
            metavar="PATH",
            help=(
                "JSON file naming the relay, its CA and the vault keys; reaches the vault,"
                " and a restore writes it into the new profile (default: the profile's"
                " own, else for a restore the one recorded in the backup)"
            ),
        )
        if name == "restore":
            action.add_argument(
                "--take-over",
                action="store_true",
                help=(
                    "at its first start, the restored profile takes the original device's"
                    " place (the original is signed out); by default it becomes another"
                    " device of the account and the original keeps working"
                ),
            )
        if name == "prune":
            for rule, what in (
                ("last", "the newest N snapshots (at least 1)"),
                ("daily", "the newest snapshot of each of the last N days that have one"),
                ("weekly", "the newest snapshot of each of the last N weeks (ISO)"),
                ("monthly", "the newest snapshot of each of the last N months"),
            ):
                action.add_argument(
                    f"--keep-{rule}",
                    type=_count,
                    default=None,
                    metavar="N",
                    help=f"keep {what}; default: the profile's setting",
                )
            action.add_argument(
                "--dry-run",
                action="store_true",
                help="say which snapshots would be deleted; delete nothing",
            )


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, 0 or more, not {text!r}")
    return value


class _Input:
    """Lines of stdin, read once, in the documented order."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def line(self, what: str) -> str:
        text = self._stream.readline()
        if not text:
            raise UsageError(f"expected {what} on stdin")
        return text.rstrip("\r\n")


def _protector(profile: Path, args: argparse.Namespace, stdin: _Input) -> Protector:
    if args.passphrase_stdin:
        return PassphraseProtector(stdin.line("the profile passphrase"))
    return KeyringProtector(account=str(profile))


def _open_store(profile: Path, args: argparse.Namespace, stdin: _Input) -> Store:
    if not Store.exists(profile):
        raise BackupError(f"there is no profile in {profile}")
    try:
        if Store.key_method(profile) == "passphrase" and not args.passphrase_stdin:
            # Asking the keyring for a key it never held fails with a message
            # about the keyring; what the caller has to do is pass the passphrase.
            raise UsageError(
                f"the profile {profile.name!r} is protected by a passphrase; pass "
                "--passphrase-stdin and write the passphrase on the first line of stdin"
            )
        return Store.open(profile, _protector(profile, args, stdin))
    except StoreError as error:
        raise BackupError(str(error)) from None


def _server_config_path(args: argparse.Namespace) -> Path | None:
    """--server-config after the action, else before `backup`, else None."""
    chosen: Path | None = getattr(args, "action_server_config", None) or getattr(
        args, "server_config", None
    )
    return chosen


def _chosen_server_config(args: argparse.Namespace) -> ServerConfig | None:
    path = _server_config_path(args)
    if path is None:
        return None
    try:
        return ServerConfig.load(path)
    except ConfigError as error:
        raise UsageError(str(error)) from None


def _access(profile: Path, args: argparse.Namespace) -> service.VaultAccess:
    explicit = _server_config_path(args)
    try:
        config = ServerConfig.load(explicit or profile / SERVER_CONFIG_NAME)
        profile.mkdir(parents=True, exist_ok=True, mode=0o700)
        return service.VaultAccess(config, profile)
    except (ConfigError, FileNotFoundError):
        raise UsageError(
            "this profile has no server config; pass --server-config to reach the vault"
        ) from None


def _pick(args: argparse.Namespace, store_folder: str | None = None) -> engine.BackupInfo:
    if args.file is not None:
        return engine.describe(args.file)
    folder = args.folder or (Path(store_folder) if store_folder else None)
    if folder is None:
        raise UsageError("say which backup: --folder DIR (newest is used) or --file FILE")
    return engine.newest_backup(folder)


def _key(info: engine.BackupInfo, profile: Path, args: argparse.Namespace, stdin: _Input) -> bytes:
    if args.key is not None and args.password_stdin:
        raise UsageError("pass either --key or --password-stdin, not both")
    if args.key is not None:
        text = stdin.line("the 64-digit key") if args.key == "-" else args.key
        return service.key_for(info, key=parse_key(text))
    if args.password_stdin:
        password = stdin.line("the backup password")
        return service.key_for(info, password=password, access=_access(profile, args))
    raise UsageError(
        f"this backup is protected by its {info.method}; pass --key or --password-stdin"
    )


class _ProgressLine:
    """One line of progress on stderr, rewritten in place at most once a second."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._started = time.monotonic()
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < 1 and done < total:
            return
        self._last = now
        speed = done / max(now - self._started, 1e-6)
        # Padded: a shorter line must cover the end of the longer one before it.
        line = f"{format_size(done)} of {format_size(total)}, {format_size(speed)}/s"
        self._out.write(f"\r{line:<48}")
        self._out.flush()
        self._shown = True

    def end(self) -> None:
        """Ends the line, so whatever is written next starts on a line of its own."""
        if self._shown:
            self._out.write("\n")
            self._shown = False


def _fail(progress: _ProgressLine, err: TextIO, message: object, code: int) -> int:
    progress.end()
    err.write(f"cipherline backup: {message}\n")
    return code


def run(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    lines = _Input(stdin or sys.stdin)
    out = out or sys.stdout
    profile = profile_dir(args.backup_profile or getattr(args, "profile", None) or "default")
    err = sys.stderr
    progress = _ProgressLine(err)
    try:
        if args.action == "status":
            return _status(profile, args, lines, out)
        if args.action == "list":
            return _list(profile, args, lines, out)
        if args.action == "prune":
            return _prune(profile, args, lines, out)
        if args.action == "now":
            store = _open_store(profile, args, lines)
            try:
                info = service.back_up_now(store, profile, progress=progress)
            finally:
                store.close()
            progress.end()
            out.write(f"backup written: {info.path} ({format_size(info.size)})\n")
            return 0
        if args.action == "verify":
            if args.passphrase_stdin:
                # Verifying opens no profile, but the passphrase line is still the
                # first one: the order on stdin is the same for every action.
                lines.line("the profile passphrase")
            info = _pick(args)
            key = _key(info, profile, args, lines)
            report = engine.verify_backup(info.path, key, progress=progress)
            progress.end()
            out.write(
                f"OK: {info.path} — {report.describe_contents()}, "
                f"{format_size(report.size)}, every chunk authentic\n"
            )
            return 0
        if args.action == "restore":
            info = _pick(args)
            if Store.exists(profile):
                raise ProfileNotEmpty(
                    f"the profile {profile.name!r} already holds an account; "
                    "restore into a new one with --profile NAME"
                )
            if not args.passphrase_stdin and not keyring_usable():
                raise UsageError(
                    "no usable keyring here; pass --passphrase-stdin to protect the profile"
                )
            chosen = _chosen_server_config(args)
            protector = _protector(profile, args, lines)
            key = _key(info, profile, args, lines)
            result = engine.restore_backup(
                info.path, key, profile, protector, server_config=chosen, progress=progress
            )
            store = Store.open(profile, protector)
            try:
                service.store_key_after_restore(store, key)
                if args.take_over:
                    with store.transaction():
                        store.settings.set(RESTORED_DEVICE_SETTING, RESTORED_TAKE_OVER)
            finally:
                store.close()
            progress.end()
            out.write(
                f"restored {result.counts.get('messages', 0):,} messages and "
                f"{result.files:,} attachments into profile {profile.name!r}\n"
            )
            if result.server_config is not None:
                out.write(f"relay: {result.server_config.relay_url}\n")
            else:
                err.write(
                    "cipherline backup: this backup records no relay and none was given;"
                    " the profile cannot connect until it is started with --server-config\n"
                )
            return 0
    except WrongPassword as error:
        return _fail(progress, err, error, 3)
    except (LockedOut, VaultError) as error:
        return _fail(progress, err, error, VAULT_EXIT)
    except BackupError as error:
        return _fail(progress, err, error, error.exit_code)
    except OSError as error:
        return _fail(progress, err, f"{error.strerror or error}: {error.filename or ''}", 1)
    return 2


def _status(profile: Path, args: argparse.Namespace, lines: _Input, out: TextIO) -> int:
    folder = args.folder
    if Store.exists(profile) and folder is None:
        store = _open_store(profile, args, lines)
        try:
            state = store.backup_state.get()
        finally:
            store.close()
        out.write(f"method: {state.method or 'off'}\nschedule: {state.schedule}\n")
        out.write(f"folder: {state.folder or '-'}\n")
        if state.last_success:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(state.last_success))
            out.write(f"last backup: {stamp} ({format_size(state.last_size or 0)})\n")
        folder = Path(state.folder) if state.folder else None
    if folder is None:
        raise NotABackup("no backup folder is set; pass --folder")
    backups = engine.list_backups(folder)
    out.write(f"{len(backups)} backup(s) in {folder}\n")
    for info in backups:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
        # A snapshot's size is what restoring it reads; "added" is what its backup
        # wrote into the folder (the rest it shares with the others).
        added = f"  +{format_size(info.added)} added" if info.version >= 3 else ""
        out.write(
            f"  {stamp}  {format_size(info.size):>12}  {info.method}  {info.path.name}{added}\n"
        )
    return 0


def _list(profile: Path, args: argparse.Namespace, lines: _Input, out: TextIO) -> int:
    folder = args.folder
    if folder is None and Store.exists(profile):
        store = _open_store(profile, args, lines)
        try:
            configured = store.backup_state.get().folder
        finally:
            store.close()
        folder = Path(configured) if configured else None
    if folder is None:
        raise NotABackup("no backup folder is set; pass --folder")
    backups = engine.list_backups(folder)
    if not backups:
        raise NotABackup(f"no backup in {folder}")
    out.write(f"{'date':<16}  {'added':>10}  {'total':>10}  name\n")
    for info in backups:
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.created))
        # Version 1 and 2 files share nothing: what each added is its whole size.
        added = info.added if info.version >= 3 else info.size
        out.write(
            f"{stamp:<16}  {format_size(added):>10}  {format_size(info.size):>10}  "
            f"{info.path.name}\n"
        )
    return 0


def _prune(profile: Path, args: argparse.Namespace, lines: _Input, out: TextIO) -> int:
    """With --key or --password-stdin, any folder; otherwise the profile's own
    backups, key and keep rules. --keep-* replace the profile's rules as a whole."""
    given = {
        rule: getattr(args, f"keep_{rule}")
        for rule in ("last", "daily", "weekly", "monthly")
        if getattr(args, f"keep_{rule}") is not None
    }
    rule: snapshots.Retention | None = (
        snapshots.Retention(**{"last": 1, **given}) if given else None
    )
    if args.key is not None or args.password_stdin:
        if args.passphrase_stdin:
            lines.line("the profile passphrase")
        if args.folder is None:
            raise UsageError("with --key or --password-stdin, say which folder: --folder DIR")
        folder = args.folder
        info = engine.newest_backup(folder)
        key = _key(info, profile, args, lines)
        if rule is None:
            raise UsageError("say what to keep: --keep-last, --keep-daily, ... (see --help)")
    else:
        store = _open_store(profile, args, lines)
        try:
            state = store.backup_state.get()
            if not state.backup_key or not state.folder:
                raise BackupNotConfigured("backups are not set up for this profile")
            key, configured = state.backup_key, service.retention(store)
        finally:
            store.close()
        folder = args.folder or Path(state.folder)
        rule = rule or configured
    repo = snapshots.Repository.for_key(folder, key)
    if args.dry_run:
        dated = sorted(
            ((snapshots.read_header(path).created_ns, path) for path in repo.snapshot_paths()),
            reverse=True,
        )
        keep = snapshots.kept_times((created for created, _path in dated), rule)
        for created, path in dated:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(created / 1e9))
            out.write(f"{'keep' if created in keep else 'delete':<6}  {stamp}  {path.name}\n")
        out.write(f"would keep {rule.describe()}; nothing deleted (--dry-run)\n")
        return 0
    report = snapshots.prune(folder, key, retention=rule)
    out.write(
        f"kept {rule.describe()}: deleted {report.snapshots:,} snapshot(s) and "
        f"{report.packs:,} pack(s), repacked {report.repacked:,}, "
        f"freed {format_size(report.freed)}\n"
    )
    return 0
