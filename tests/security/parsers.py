"""Every parser of untrusted bytes, with the only errors it may raise.

Used by the hypothesis suite (CI) and by `scripts/fuzz_parsers.py` (atheris,
longer runs). A target takes bytes; anything but its listed errors is a bug.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.backup import format as backup_format
from app.backup.errors import BackupError
from app.crypto import DecryptionError, DeterministicRng, HpkePrivateKey, SigningKey, hpke_open
from app.protocol import ProtocolError, group_state
from app.protocol import vault as vault_protocol
from app.protocol.attachments import AttachmentSecret, decrypt_attachment
from app.protocol.content import decode_content
from app.protocol.identity import PublicIdentity
from app.protocol.sender_keys import SenderKeyDistribution, group_message_chain
from app.protocol.session import Envelope
from app.store.errors import StoreError
from app.store.keyfile import KeyFile

_RNG = DeterministicRng(b"fuzz targets")
_FLEET_PRIVATE = HpkePrivateKey.generate(_RNG)
_VAULT_VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "vault_v2.json").read_text()
)
_RESPONSE_KEY = bytes.fromhex(_VAULT_VECTORS["response"]["response_key"])
_BACKUP_KEY = bytes(range(32))
_BACKUP_HEADER = backup_format.new_header(
    _BACKUP_KEY, backup_format.METHOD_KEY, chunk_size=backup_format.MIN_CHUNK_SIZE, rng=_RNG
)
_ATTACHMENT = AttachmentSecret(key=bytes(32), digest=bytes(32), size=100)


def _backup(data: bytes) -> None:
    header, length = backup_format.BackupHeader.parse(data)
    decoder = backup_format.BackupDecoder(_BACKUP_KEY, header, length)
    list(decoder.feed(data[length:]))
    list(decoder.finish())


def _backup_stream(data: bytes) -> None:
    """Random chunks after a valid header (the header itself is `_backup`'s job)."""
    header = _BACKUP_HEADER.to_bytes()
    decoder = backup_format.BackupDecoder(_BACKUP_KEY, _BACKUP_HEADER, len(header))
    list(decoder.feed(data))
    list(decoder.finish())


def _vault_request(data: bytes) -> None:
    plain = hpke_open(_FLEET_PRIVATE, data, vault_protocol.REQUEST_INFO + b"login_start")
    vault_protocol.parse_inner_request(plain)


def _key_file(data: bytes) -> None:
    KeyFile.from_json(data.decode("utf-8", errors="replace"))


def _attachment(data: bytes) -> None:
    decrypt_attachment(io.BytesIO(data), io.BytesIO(), _ATTACHMENT)


@dataclass(frozen=True)
class Target:
    name: str
    parse: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]
    sample: bytes = b""  # a valid input, for mutation


def _samples() -> dict[str, bytes]:
    from app.crypto import Argon2Params
    from app.protocol.content import Text, encode_content
    from app.protocol.identity import DeviceIdentity
    from app.store.keyfile import PassphraseProtector
    from tests.protocol.helpers import start_pair

    vectors = Path(__file__).resolve().parents[1] / "vectors"
    vault_vectors = _VAULT_VECTORS
    backup_vectors = json.loads((vectors / "backup_v2.json").read_text())
    _alice, _bob, alice_session, _bob_session = start_pair()
    fast = Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)
    key_file = PassphraseProtector("fuzz", fast).wrap(bytes(32), _RNG)
    backup = bytes.fromhex(backup_vectors["cases"][0]["file"])
    return {
        "envelope": alice_session.encrypt(b"sample"),
        "content": encode_content(Text("m-1", 1_700_000_000_000, "sample text")),
        "public identity": DeviceIdentity.generate(_RNG).public.to_bytes(),
        "group change": group_state.create(
            bytes(16), "Trip", "alice", ["bob"], SigningKey.generate(_RNG)
        ).to_bytes(),
        "vault fleet bundle": bytes.fromhex(vault_vectors["fleet"]["bundle"]),
        "vault sealed request": bytes.fromhex(vault_vectors["request"]["body"]),
        "vault response": bytes.fromhex(vault_vectors["response"]["sealed"]),
        "backup file": backup,
        "backup database entry": backup_format.DatabaseImage(2, 4096, 8192, bytes(32)).to_frame()[
            backup_format.FRAME_HEADER_LENGTH :
        ],
        "key file": key_file.to_json().encode(),
    }


TARGETS = [
    Target("envelope", Envelope.from_bytes, (ProtocolError,)),
    Target("content", decode_content, (ProtocolError,)),
    Target("public identity", PublicIdentity.from_bytes, (ProtocolError,)),
    Target("sender key distribution", SenderKeyDistribution.from_bytes, (ProtocolError,)),
    Target("group message", group_message_chain, (ProtocolError,)),
    Target("attachment stream", _attachment, (ProtocolError,)),
    Target("group change", group_state.GroupChange.from_bytes, (ProtocolError,)),
    Target("vault fleet bundle", vault_protocol.Fleet.from_bytes, (ProtocolError,)),
    Target("vault inner request", vault_protocol.parse_inner_request, (ProtocolError,)),
    Target("vault sealed request", _vault_request, (ProtocolError, DecryptionError)),
    Target(
        "vault response",
        lambda data: vault_protocol.open_response(_RESPONSE_KEY, "login_start", (200, data)),
        (ProtocolError,),
    ),
    Target("backup file", _backup, (BackupError,)),
    Target("backup chunks", _backup_stream, (BackupError,)),
    Target("backup database entry", backup_format.DatabaseImage.parse, (ProtocolError,)),
    Target("key file", _key_file, (StoreError,)),
]
_SAMPLES = _samples()
TARGETS = [Target(t.name, t.parse, t.allowed, _SAMPLES.get(t.name, b"")) for t in TARGETS]
