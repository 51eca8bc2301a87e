# No `from __future__ import annotations` here: FastAPI must see the dependency
# types defined inside create_app() at decoration time.
"""The relay's HTTP application: accounts, prekeys, mailbox, push, attachments,
vault pass-through. It routes ciphertext; bodies are opaque to it."""

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import secrets
import threading
import time
import traceback
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, BinaryIO, TypeVar

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, WebSocket
from fastapi import Path as PathParameter
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from app import __version__
from app.crypto import SigningKey, constant_time_equal, sha256
from app.protocol.device_list import FORMAT as DEVICE_LIST_FORMAT
from app.protocol.encoding import Reader
from app.protocol.errors import ProtocolError
from app.protocol.sealed import ACCESS_KEY_LENGTH, SenderCertificate
from relay.gate import gate_for
from relay.metrics import Metrics
from relay.storage import (
    DEVICE_LIST_EVENT,
    DEVICE_REMOVED_EVENT,
    LINK_NOTIFY_PREFIX,
    PRIVATE_FILE_MODE,
    DeviceRow,
    HandoutLimits,
    MailboxQuota,
    NewEnvelope,
    PostgresStorage,
    QuotaExceeded,
    Storage,
    open_storage,
    private_directory,
    tighten,
)

log = logging.getLogger("relay")
T = TypeVar("T")
_RELAY_PACKAGE = Path(__file__).resolve().parent

USERNAME = re.compile(r"^[a-z0-9_.-]{3,32}$")
CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BLOB_ID = re.compile(r"^[0-9a-f]{32}$")
VAULT_OP = re.compile(r"^[a-z_]{1,32}$")
DAY_MS = 86_400_000
HOUR_MS = 3_600_000
PUSH_BATCH = 500
PUSH_IDLE_SECONDS = 20  # a ping this often keeps middleboxes from dropping idle sockets
MAILBOX_FULL_RETRY_SECONDS = 60
# Every integer a request carries is bounded to what storage holds: SQLite's INTEGER
# and PostgreSQL's BIGINT are signed 64-bit, and a larger Python int overflows in the
# driver (a 500) before any row is compared.
MAX_STORED_INT = 2**63 - 1
MAX_DEVICE_ID = 2**31 - 1
# A prekey upload at its schema's most: 2 x 500 keys of 4,096 base64 characters, the
# identity, signed and last-resort keys, and the JSON around them, with room to spare.
KEY_UPLOAD_BYTES = 5 * 1024 * 1024
VAULT_BODY_BYTES = 64 * 1024
PURGE_SECONDS = 60
# /metrics is unauthenticated: its storage-derived gauges are computed at most this often.
DEPTH_REFRESH_SECONDS = 5.0
QUOTA_KINDS = (
    "device",
    "prekey",
    "mailbox_envelopes",
    "mailbox_bytes",
    "attachment",
    "link_mailboxes",
    "link_messages",
)
# A signed device list (docs/protocol.md §13) of 32 devices is under 5 KiB.
MAX_DEVICE_LIST_BYTES = 8 * 1024
# u8 format | u64 version: all of a list the relay reads.
DEVICE_LIST_HEADER_BYTES = 9
# A push connection of a device removed from its account is closed with this code
# (HTTP's 410 Gone, in the private range), its requests answered 401 "device_removed".
DEVICE_REMOVED_CLOSE = 4410
DEVICE_REMOVED_MESSAGE = "this device was removed from the account"
# A link mailbox id: 40 random bits as 8 characters of RFC 4648 base32.
LINK_ID = re.compile(r"^[A-Z2-7]{8}$")
LINK_ID_BYTES = 5
LINK_ROLES = {"new": 1, "existing": 2}
LINK_PUBLIC_KEY_BYTES = 32
MAX_LINK_WAIT_SECONDS = 25.0
LINK_NOT_FOUND = "no such link request, or it expired"
# Set on the ASGI scope by LimitRequestBodies so a 413 it answers itself (before any
# route matched) is still logged and counted under its route template.
ROUTE_TEMPLATE_KEY = "cipherline.route_template"
# (token, DeviceRow) of a bearer token LimitRequestBodies has already looked up.
AUTHENTICATED_KEY = "cipherline.authenticated"


@dataclass(frozen=True)
class RelaySettings:
    data_dir: Path
    database_url: str | None = None
    vault_urls: tuple[str, ...] = ()
    # The split vault's domains: domain number (1-3) -> its nodes' URLs.
    vault_domains: dict[int, tuple[str, ...]] = field(default_factory=dict)
    envelope_retention_ms: int = 30 * DAY_MS
    attachment_retention_ms: int = 30 * DAY_MS
    max_attachment_bytes: int = 100 * 1024 * 1024
    max_envelope_bytes: int = 256 * 1024
    # ---- request bodies: checked while they are read, before anything is buffered
    # Every JSON route not named below (accounts, devices, acknowledgements).
    max_request_bytes: int = 64 * 1024
    # POST /v1/messages: a batch of envelopes (each at most max_envelope_bytes).
    max_send_request_bytes: int = 16 * 1024 * 1024
    # ---- quotas (docs/relay-api.md, "Limits and quotas")
    # Active (not removed) devices of one account.
    max_devices_per_account: int = 5
    # One-time prekeys stored per device, of each kind (X25519 and ML-KEM).
    max_one_time_prekeys: int = 1000
    # What waits in one device's mailbox: envelopes, and their bodies' bytes.
    mailbox_quota: int = 10_000
    mailbox_quota_bytes: int = 100 * 1024 * 1024
    # Attachment bytes one account may upload in any 24 hours.
    attachment_bytes_per_day: int = 1024 * 1024 * 1024
    # Fetches of one account's bundle per hour that hand out one-time prekeys: to one
    # requesting account, and to everyone together. Beyond them the bundle is served
    # without one-time keys (a session then starts on the signed and last-resort keys).
    prekey_fetches_per_requester: int = 5
    prekey_handouts_per_account: int = 50
    # How soon an acknowledged or expired envelope's body is scrubbed from SQLite's WAL.
    scrub_seconds: float = 5.0
    rate_per_second: float = 50.0
    rate_burst: float = 200.0
    # Many people can share one address (NAT, an office); the address bucket only
    # stops floods, the account bucket keeps one client from crowding out others.
    address_rate_per_second: float = 1000.0
    address_rate_burst: float = 4000.0
    # Sealed sends carry no account: their limits are per delivery token (or per
    # recipient device for "allow sealed from anyone") and per connection.
    sealed_rate_per_second: float = 20.0
    sealed_rate_burst: float = 100.0
    # How long a sender certificate is valid (docs/protocol.md, "Sealed sender").
    sender_certificate_ms: int = DAY_MS
    vault_rate_per_second: float = 5.0
    vault_rate_burst: float = 20.0
    # ---- link mailboxes (docs/relay-api.md, "Linking a device"): anonymous, so
    # bounded in all, and limited per client address on top of the address bucket.
    link_mailbox_ms: int = 10 * 60_000
    max_link_mailboxes: int = 1000
    max_link_body_bytes: int = 64 * 1024
    # Per role, per mailbox: 64 x 64 KiB carries a provision of 4 MiB (the
    # account's contacts, lists and groups: app/services/link_state.py).
    max_link_messages: int = 64
    link_rate_per_second: float = 10.0
    link_rate_burst: float = 40.0
    # Opening one holds a place of max_link_mailboxes for link_mailbox_ms: one
    # address alone can take few of them.
    link_open_rate_per_second: float = 0.2
    link_open_burst: float = 10.0
    bench_echo: bool = False
    clock: Callable[[], int] = field(default=lambda: int(time.time() * 1000))

    def __post_init__(self) -> None:
        if self.attachment_bytes_per_day < self.max_attachment_bytes:
            raise ValueError(
                "the daily attachment allowance must hold at least one attachment of the"
                " largest size accepted"
            )
        if self.mailbox_quota_bytes < self.max_envelope_bytes:
            raise ValueError("a mailbox must hold at least one envelope of the largest size")
        # In a send an envelope is base64 in JSON: a third larger, and then some.
        if self.max_send_request_bytes < self.max_envelope_bytes * 4 // 3 + 1024:
            raise ValueError("a send request must fit at least one envelope of the largest size")
        if self.link_mailbox_ms < 1 or self.max_link_mailboxes < 1 or self.max_link_messages < 1:
            raise ValueError("link mailboxes need a lifetime, room for one, and for one message")


class RelayHTTPError(HTTPException):
    def __init__(
        self, status: int, message: str, headers: dict[str, str] | None, code: str | None
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code


def fail(
    status: int, message: str, headers: dict[str, str] | None = None, *, code: str | None = None
) -> RelayHTTPError:
    """An error answer: `{"error": message}`, plus `"code"` for a refusal a client
    acts on (a quota, a rate limit, a size limit: docs/relay-api.md)."""
    return RelayHTTPError(status, message, headers, code)


def _wait_seconds(milliseconds: float) -> int:
    return max(1, math.ceil(milliseconds / 1000))


class TokenBucket:
    """Per-key token buckets; 429 with Retry-After when one runs dry."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when allowed, else seconds until a token is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._state.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._state[key] = (tokens - 1, now)
                return 0.0
            self._state[key] = (tokens, now)
            if len(self._state) > 100_000:
                self._state.clear()
            return (1 - tokens) / self.rate


class Subscription:
    """One push connection's wake-up: new mail, and whether its key stock may be low."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.keys_changed = True  # checked once when the connection opens
        self.device_list_changed = False
        self.removed = False

    async def wait(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout=timeout)
        return self.event.is_set()


class PushHub:
    """Wakes WebSocket handlers of this process when their mailbox or key stock changes."""

    def __init__(self) -> None:
        self._subscriptions: dict[tuple[int, int], set[Subscription]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self, key: tuple[int, int]) -> Subscription:
        subscription = Subscription()
        self._subscriptions[key].add(subscription)
        return subscription

    def unsubscribe(self, key: tuple[int, int], subscription: Subscription) -> None:
        self._subscriptions[key].discard(subscription)
        if not self._subscriptions[key]:
            del self._subscriptions[key]

    def wake(self, account_id: int, device_id: int, *, keys: bool = False, event: str = "") -> None:
        """Thread-safe. `event`: DEVICE_LIST_EVENT or DEVICE_REMOVED_EVENT, if any."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake, (account_id, device_id), keys, event)

    def _wake(self, key: tuple[int, int], keys: bool, event: str) -> None:
        for subscription in list(self._subscriptions.get(key, ())):
            subscription.keys_changed |= keys
            subscription.device_list_changed |= event == DEVICE_LIST_EVENT
            subscription.removed |= event == DEVICE_REMOVED_EVENT
            subscription.event.set()

    def notified(self, payload: str) -> None:
        """A PostgreSQL NOTIFY from any instance: "account:device[:event]"."""
        account, _, rest = payload.partition(":")
        device, _, event = rest.partition(":")
        with contextlib.suppress(ValueError):
            self.wake(int(account), int(device), event=event)


class LinkWaiters:
    """Wakes long polls on a link mailbox (of this process) when a message is posted
    to it or it is closed; a poll then reads the mailbox again."""

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def add(self, mailbox_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiting[mailbox_id].add(event)
        return event

    def discard(self, mailbox_id: str, event: asyncio.Event) -> None:
        self._waiting[mailbox_id].discard(event)
        if not self._waiting[mailbox_id]:
            del self._waiting[mailbox_id]

    def wake(self, mailbox_id: str) -> None:
        """Thread-safe."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake, mailbox_id)

    def _wake(self, mailbox_id: str) -> None:
        for event in list(self._waiting.get(mailbox_id, ())):
            event.set()


# Clients store a device's name encrypted for the account's own devices (386
# characters, app/protocol/device_names.py); the relay cannot read it, only bound it.
MAX_DEVICE_NAME = 512


class NewAccount(BaseModel):
    username: str = Field(max_length=64)
    device_name: str = Field(min_length=1, max_length=MAX_DEVICE_NAME)


class NewDevice(BaseModel):
    device_name: str = Field(min_length=1, max_length=MAX_DEVICE_NAME)


class KeyEntry(BaseModel):
    id: int = Field(ge=0, le=2**32 - 1)
    key: str = Field(max_length=4096)


class KeyUpload(BaseModel):
    identity: str | None = Field(default=None, max_length=512)
    signed_prekey: str | None = Field(default=None, max_length=512)
    last_resort_kem_prekey: str | None = Field(default=None, max_length=4096)
    one_time_prekeys: list[KeyEntry] = Field(default_factory=list, max_length=500)
    one_time_kem_prekeys: list[KeyEntry] = Field(default_factory=list, max_length=500)


class OutgoingEnvelope(BaseModel):
    id: str = Field(max_length=64)
    recipient: str = Field(max_length=64)
    device_id: int = Field(ge=1, le=MAX_DEVICE_ID)
    body: str = Field(max_length=400_000)


class SendRequest(BaseModel):
    messages: list[OutgoingEnvelope] = Field(min_length=1, max_length=1000)


class SealedEnvelope(BaseModel):
    id: str = Field(max_length=64)
    recipient: str = Field(max_length=64)
    device_id: int = Field(ge=1, le=MAX_DEVICE_ID)
    body: str = Field(max_length=400_000)
    # The recipient device's delivery token (base64); none for a device that
    # accepts sealed mail from anyone.
    access_key: str | None = Field(default=None, max_length=64)


class SealedSendRequest(BaseModel):
    messages: list[SealedEnvelope] = Field(min_length=1, max_length=100)


class SealedAccess(BaseModel):
    access_key: str | None = Field(default=None, max_length=64)
    allow_anyone: bool = False


class DeviceListUpload(BaseModel):
    # Bounded by the request limit; the decoded size is checked with a clear 413.
    device_list: str = Field(max_length=64 * 1024)


class NewLinkMailbox(BaseModel):
    public_key: str = Field(max_length=1024)


class LinkMessage(BaseModel):
    # Bounded by the route's request limit; the decoded size is checked with a 413.
    body: str


class AckRequest(BaseModel):
    seqs: list[Annotated[int, Field(ge=0, le=MAX_STORED_INT)]] = Field(max_length=1000)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str, limit: int) -> bytes:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise fail(400, f"{what} is not valid base64") from None
    if not data:
        raise fail(400, f"{what} is empty")
    if len(data) > limit:
        raise fail(413, f"{what} is larger than {limit} bytes")
    return data


def device_list_version(signed: bytes) -> int:
    """The version of a published device list: all the relay reads of it. The
    signature means nothing here (the relay does not know which account identity a
    contact pinned); clients open lists themselves (app/protocol/device_list.py)."""
    reader = Reader(signed, "device list")
    try:
        reader.version(DEVICE_LIST_FORMAT)
        version = reader.u64()
    except ProtocolError:
        raise fail(
            400,
            f"a device list starts with its format ({DEVICE_LIST_FORMAT}) and a 64-bit"
            " version; this one does not",
        ) from None
    if not 1 <= version <= MAX_STORED_INT:
        # Storage holds signed 64 bits; a client counts up from 1 and never gets near.
        raise fail(400, f"a device list's version is 1 to {MAX_STORED_INT} on this relay")
    return version


def new_link_id() -> str:
    return base64.b32encode(secrets.token_bytes(LINK_ID_BYTES)).decode("ascii")


def _json_log(**fields: Any) -> None:
    log.info(json.dumps(fields, separators=(",", ":")))


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _where(error: BaseException) -> str:
    """The innermost of the relay's own frames an error passed, as file:line: enough
    to find the bug from a log line, without a traceback's locals or request data."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [frame for frame in frames if Path(frame.filename).parent == _RELAY_PACKAGE]
    if not (own or frames):
        return "unknown"
    frame = (own or frames)[-1]
    return f"{Path(frame.filename).name}:{frame.lineno}"


class ObserveRequests:
    """Counts and times every HTTP request and logs one JSON line: method, route
    template, status and milliseconds, never a body, token or username.

    An error escaping the app is answered here with a JSON 500 and logged on that
    same line (its type and innermost file:line), not as a traceback: Starlette's
    own handler would answer and then raise the error again, for uvicorn to print.

    Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware
    runs every request through an extra task and memory streams, which cost the
    relay about a tenth of its time per message.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an error escaping the app is a 500
        responded = False
        failure: dict[str, str] = {}

        async def observed(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                status = int(message["status"])
                responded = True
            await send(message)

        try:
            await self.app(scope, receive, observed)
        except Exception as error:  # noqa: BLE001 - answered and logged, see the docstring
            failure = {"error": type(error).__name__, "at": _where(error)}
            if not responded:
                status = 500
                await _send_json(send, 500, {"error": "the relay hit an internal error"})
        finally:
            template = getattr(scope.get("route"), "path", None) or scope.get(
                ROUTE_TEMPLATE_KEY, "unmatched"
            )
            elapsed = time.perf_counter() - started
            self.metrics.observe(scope["method"], template, status, elapsed)
            _json_log(
                method=scope["method"],
                route=template,
                status=status,
                ms=round(elapsed * 1000, 2),
                **failure,
            )


@dataclass(frozen=True)
class BodyLimit:
    """The largest body one route accepts."""

    method: str
    template: str
    max_bytes: int
    what: str  # names the body in the refusal: "{what} is limited to N bytes"
    # For a route whose handler needs a token but whose body FastAPI reads before
    # the token is checked: the limit without a valid token (None: max_bytes).
    anonymous_bytes: int | None = None

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", self.template) + "$")


class BodyTooLarge(Exception):
    """Raised into the app by `receive` once a body passes its route's limit, so the
    handler stops reading; LimitRequestBodies answers the 413."""


class LimitRequestBodies:
    """Refuses a request body larger than its route allows with a 413, before it is
    buffered: at once when Content-Length declares it, else (chunked, or a client
    sending more than it declared) as soon as the bytes received cross the limit,
    without reading on. The 413 closes the connection, so the rest of the body is
    never read either.

    It comes before authentication, which FastAPI runs only after reading a JSON
    body. So a route with a large limit and an `anonymous_bytes` one looks the bearer
    token up first (`authenticate`): without a valid one the small limit applies,
    and an anonymous request cannot make the relay hold more than that. The device
    found is left on the scope (AUTHENTICATED_KEY) for the handler's own check.

    Plain ASGI for the reason given on ObserveRequests.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: Sequence[BodyLimit],
        default_bytes: int,
        metrics: Metrics,
        authenticate: Callable[[str], Awaitable[DeviceRow | None]],
    ) -> None:
        self.app = app
        self.limits = [(limit, limit.pattern) for limit in limits]
        self.default = BodyLimit("*", "", default_bytes, "a request body")
        self.metrics = metrics
        self.authenticate = authenticate

    async def _without_valid_token(self, scope: Scope) -> bool:
        authorization = next(
            (value for name, value in scope["headers"] if name == b"authorization"), b""
        ).decode("latin-1")
        if not authorization.startswith("Bearer "):
            return True
        token = authorization[7:].strip()
        device = await self.authenticate(token)
        if device is None or device.revoked:
            return True
        scope[AUTHENTICATED_KEY] = (token, device)
        return False

    def limit_for(self, method: str, path: str) -> BodyLimit:
        for limit, pattern in self.limits:
            if limit.method == method and pattern.match(path):
                return limit
        return self.default

    async def refuse(self, send: Send, limit: BodyLimit) -> None:
        self.metrics.count("body_too_large_total", route=limit.template or "other")
        await _send_json(
            send,
            413,
            {
                "error": f"{limit.what} is limited to {limit.max_bytes:,} bytes",
                "code": "body_too_large",
            },
            # Not reading the rest of a body means not keeping its connection.
            [(b"connection", b"close")],
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        if limit.template:
            scope[ROUTE_TEMPLATE_KEY] = limit.template
        if limit.anonymous_bytes is not None and await self._without_valid_token(scope):
            limit = dataclasses.replace(
                limit,
                max_bytes=limit.anonymous_bytes,
                what=f"{limit.what} without a valid token",
                anonymous_bytes=None,
            )
        declared = next(
            (value for name, value in scope["headers"] if name == b"content-length"), None
        )
        if declared is not None and declared.isdigit() and int(declared) > limit.max_bytes:
            await self.refuse(send, limit)
            return
        received = 0
        exceeded = False
        responded = False

        async def counted() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal responded
            if exceeded:
                return  # the app's answer to a body cut short gives way to the 413
            responded |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            # Whatever the handler made of BodyTooLarge (FastAPI wraps errors reading
            # a body as a 400); any other error goes on to ObserveRequests.
            if not exceeded:
                raise
        if exceeded and not responded:
            await self.refuse(send, limit)


def _every(seconds: float, compute: Callable[[], T]) -> Callable[[], T]:
    """`compute`, run again only once its last answer is `seconds` old."""
    lock = threading.Lock()
    last: list[tuple[float, T]] = []

    def cached() -> T:
        with lock:
            now = time.monotonic()
            if not last or now - last[0][0] >= seconds:
                last[:] = [(now, compute())]
            return last[0][1]

    return cached


def _depth_gauges(storage: Storage) -> dict[str, float]:
    depth = storage.mailbox_depth()
    return {
        "mailbox_devices": depth.mailboxes,
        "mailbox_envelopes": depth.envelopes,
        "mailbox_bytes": depth.bytes,
        "mailbox_max_device_envelopes": depth.max_device_envelopes,
        "mailbox_max_device_bytes": depth.max_device_bytes,
    }


def _create_private(path: Path) -> BinaryIO:
    """A new file only its owner can read, whatever the umask."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    os.fchmod(descriptor, PRIVATE_FILE_MODE)
    return os.fdopen(descriptor, "wb")


SENDER_CERTIFICATE_KEY = "sender-certificate.key"
SENDER_CERTIFICATE_PUBLIC = "sender-certificate.pub"


def sender_certificate_key(data_dir: Path) -> SigningKey:
    """The relay's Ed25519 key that signs sender certificates, made once. Its public
    half goes to `tls/sender-certificate.pub` (hex) beside the CA: clients pin it in
    their server config as they pin the CA (app/config.py)."""
    path = data_dir / SENDER_CERTIFICATE_KEY
    try:
        key = SigningKey(bytes.fromhex(path.read_text().strip()))
    except FileNotFoundError:
        key = SigningKey.generate()
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(key.to_bytes().hex())
    public = data_dir / "tls" / SENDER_CERTIFICATE_PUBLIC
    text = key.verify_key().to_bytes().hex()
    if not public.exists() or public.read_text().strip() != text:
        public.parent.mkdir(mode=0o700, exist_ok=True)
        public.write_text(text + "\n")
    return key


def create_app(settings: RelaySettings) -> FastAPI:
    # Owner-only whatever the umask, and tightened at every start for data dirs
    # made by older versions (whose files and directories followed the umask).
    private_directory(settings.data_dir)
    blobs_dir = private_directory(settings.data_dir / "attachments")
    for entry in [*settings.data_dir.iterdir(), *blobs_dir.iterdir()]:
        if entry.name != "tls":  # its certificates are public; the directory is 0700
            tighten(entry)
    storage: Storage = open_storage(settings.data_dir, settings.database_url)
    certificate_key = sender_certificate_key(settings.data_dir)
    gate = gate_for(storage)
    hub = PushHub()
    links = LinkWaiters()
    metrics = Metrics()
    limiter = TokenBucket(settings.rate_per_second, settings.rate_burst)
    address_limiter = TokenBucket(settings.address_rate_per_second, settings.address_rate_burst)
    vault_limiter = TokenBucket(settings.vault_rate_per_second, settings.vault_rate_burst)
    sealed_limiter = TokenBucket(settings.sealed_rate_per_second, settings.sealed_rate_burst)
    link_limiter = TokenBucket(settings.link_rate_per_second, settings.link_rate_burst)
    link_open_limiter = TokenBucket(settings.link_open_rate_per_second, settings.link_open_burst)
    mailbox_quota = MailboxQuota(settings.mailbox_quota, settings.mailbox_quota_bytes)
    handout_limits = HandoutLimits(
        settings.prekey_fetches_per_requester, settings.prekey_handouts_per_account, HOUR_MS
    )
    body_limits = [
        BodyLimit("POST", "/v1/accounts", settings.max_request_bytes, "an account request"),
        BodyLimit("POST", "/v1/devices", settings.max_request_bytes, "a device request"),
        BodyLimit(
            "PUT",
            "/v1/keys",
            KEY_UPLOAD_BYTES,
            "a prekey upload",
            anonymous_bytes=settings.max_request_bytes,
        ),
        BodyLimit(
            "POST",
            "/v1/messages",
            settings.max_send_request_bytes,
            "a send request",
            anonymous_bytes=settings.max_request_bytes,
        ),
        BodyLimit("POST", "/v1/messages/ack", settings.max_request_bytes, "an acknowledgement"),
        # Sealed sends are anonymous: a few envelopes of the largest size at most.
        BodyLimit(
            "POST",
            "/v1/sealed/messages",
            min(settings.max_send_request_bytes, 8 * (settings.max_envelope_bytes * 4 // 3 + 1024)),
            "a sealed send request",
        ),
        BodyLimit("POST", "/v1/attachments", settings.max_attachment_bytes, "an attachment"),
        BodyLimit("POST", "/v1/vault/{op}", VAULT_BODY_BYTES, "a vault request"),
        BodyLimit("POST", "/v1/vault/domains/{domain}/{op}", VAULT_BODY_BYTES, "a vault request"),
        BodyLimit("POST", "/v1/bench/echo", settings.max_send_request_bytes, "an echo request"),
        # Base64 in JSON: a third larger, and then some.
        BodyLimit(
            "POST",
            "/v1/provisioning/{mailbox_id}/messages/{role}",
            settings.max_link_body_bytes * 4 // 3 + 1024,
            "a link message",
        ),
    ]
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        links.bind(asyncio.get_running_loop())
        gate.start(asyncio.get_running_loop())
        threads: list[threading.Thread] = []
        if isinstance(storage, PostgresStorage):
            listener = threading.Thread(
                target=storage.listen, args=(notified, stop), daemon=True, name="pg-listen"
            )
            listener.start()
            threads.append(listener)

        def janitor() -> None:
            next_purge = time.monotonic() + PURGE_SECONDS
            while not stop.wait(settings.scrub_seconds):
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_SECONDS
                    purge()
                # Every round, not every purge: a link mailbox lives minutes, and its
                # bodies should not outlive it by much more than a scrub.
                sweep_links()
                scrub()

        cleaner = threading.Thread(target=janitor, daemon=True, name="janitor")
        cleaner.start()
        purge()
        yield
        stop.set()
        cleaner.join(timeout=10)  # not mid-purge when storage closes
        gate.stop()
        storage.close()

    def notified(payload: str) -> None:
        """A PostgreSQL NOTIFY, from this instance or another."""
        if payload.startswith(LINK_NOTIFY_PREFIX):
            links.wake(payload.removeprefix(LINK_NOTIFY_PREFIX))
        else:
            hub.notified(payload)

    def sweep_links() -> None:
        try:
            storage.sweep_link_mailboxes(settings.clock())
        except Exception as error:  # noqa: BLE001 - the next round tries again
            _json_log(event="link_sweep_failed", error=type(error).__name__, at=_where(error))

    def purge() -> None:
        sweep_links()
        now = settings.clock()
        try:
            storage.purge(now - settings.envelope_retention_ms)
            storage.purge_handouts(now - HOUR_MS)
            for blob_id in storage.expired_attachments(now - settings.attachment_retention_ms):
                with contextlib.suppress(FileNotFoundError):
                    (blobs_dir / blob_id).unlink()
        except Exception as error:  # noqa: BLE001 - the next round tries again
            _json_log(event="purge_failed", error=type(error).__name__, at=_where(error))
        scrub()

    def scrub() -> None:
        try:
            storage.scrub_deleted()
        except Exception as error:  # noqa: BLE001 - the next round tries again
            _json_log(event="scrub_failed", error=type(error).__name__, at=_where(error))

    api = FastAPI(
        title="Cipherline relay",
        version=__version__,
        description="Store-and-forward of end-to-end encrypted envelopes.",
        lifespan=lifespan,
    )
    api.state.storage = storage
    api.state.purge = purge
    api.state.scrub = scrub
    api.state.sweep_links = sweep_links

    # ---- errors: always JSON with a sentence, never a traceback ------------------
    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        body = {"error": str(error.detail)}
        code = getattr(error, "code", None)
        if code:
            body["code"] = code
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    @api.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        location = list(first.get("loc", ()))
        # The leading "body" names the request body; a field called "body" stays.
        if location[:1] == ["body"]:
            location = location[1:]
        where = ".".join(str(part) for part in location)
        message = first.get("msg", "invalid request")
        return JSONResponse({"error": f"{where or 'request'}: {message}"[:300]}, status_code=422)

    # Errors escaping a handler are answered by ObserveRequests (the outermost of the
    # two): JSON, one log line, no traceback.
    api.add_middleware(
        LimitRequestBodies,
        limits=body_limits,
        default_bytes=settings.max_request_bytes,
        metrics=metrics,
        authenticate=lambda token: gate.read(storage.device_for_token, token),
    )
    api.add_middleware(ObserveRequests, metrics=metrics)

    metrics.declare("quota_refusals_total", "kind", QUOTA_KINDS)
    metrics.declare("rate_limited_total", "kind", ("account", "address", "vault", "sealed", "link"))
    metrics.declare("body_too_large_total", "route", [limit.template for limit in body_limits])
    metrics.declare("prekey_withheld_total", "limit", ("requester", "target"))
    metrics.declare("prekey_drain_suspected_total")
    metrics.declare("sealed_envelopes_total")
    metrics.declare("sealed_refused_total")
    metrics.gauge_add("push_connections", 0)
    metrics.collect(_every(DEPTH_REFRESH_SECONDS, lambda: _depth_gauges(storage)))
    metrics.collect(
        _every(
            DEPTH_REFRESH_SECONDS,
            lambda: {"link_mailboxes": storage.open_link_mailboxes(settings.clock())},
        )
    )

    def refuse_quota(
        kind: str, status: int, code: str, message: str, retry_after_ms: int | None = None
    ) -> RelayHTTPError:
        metrics.count("quota_refusals_total", kind=kind)
        headers = (
            None if retry_after_ms is None else {"Retry-After": str(_wait_seconds(retry_after_ms))}
        )
        return fail(status, message, headers, code=code)

    # ---- auth --------------------------------------------------------------------
    def client_key(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def limit(key: str) -> None:
        kind = "address" if key.startswith("ip:") else "account"
        wait = (address_limiter if kind == "address" else limiter).take(key)
        if wait:
            metrics.count("rate_limited_total", kind=kind)
            raise fail(
                429,
                "too many requests; slow down",
                {"Retry-After": str(max(1, int(wait + 0.999)))},
                code="rate_limited",
            )

    async def authenticated(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> DeviceRow:
        limit("ip:" + client_key(request))
        if not authorization or not authorization.startswith("Bearer "):
            raise fail(401, "missing bearer token")
        token = authorization[7:].strip()
        looked_up = request.scope.get(AUTHENTICATED_KEY)
        device: DeviceRow | None
        if looked_up is not None and looked_up[0] == token:
            device = looked_up[1]  # by LimitRequestBodies, moments ago
        else:
            device = await gate.read(storage.device_for_token, token)
        if device is None:
            raise fail(401, "the token is unknown")
        if device.revoked:
            # Distinct from an unknown token: the client stops trying, and says why.
            raise fail(401, DEVICE_REMOVED_MESSAGE, code="device_removed")
        limit(f"account:{device.account_id}")
        return device

    Auth = Annotated[DeviceRow, Depends(authenticated)]

    # ---- service -----------------------------------------------------------------
    if settings.bench_echo:
        # The benchmark's limit: the least this framework, server and TLS do for a
        # JSON request (an async route: no thread, authentication, storage or push).
        @api.post("/v1/bench/echo")
        async def bench_echo(body: dict[str, Any]) -> dict[str, Any]:
            return body

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "service": "relay", "version": __version__}

    @api.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        return metrics.render()

    # ---- accounts ----------------------------------------------------------------
    @api.post("/v1/accounts", status_code=201)
    def create_account(body: NewAccount, request: Request) -> dict[str, Any]:
        limit("ip:" + client_key(request))
        username = body.username.strip().lower()
        if not USERNAME.match(username):
            raise fail(400, "a username is 3-32 characters: a-z, 0-9, '.', '_' or '-'")
        token = secrets.token_urlsafe(32)
        try:
            storage.create_account(username, body.device_name, token, settings.clock())
        except storage.unique_violation:
            raise fail(409, "that username is taken") from None
        metrics.count("accounts_created_total")
        return {"username": username, "device_id": 1, "token": token}

    @api.post("/v1/devices", status_code=201)
    def add_device(body: NewDevice, device: Auth) -> dict[str, Any]:
        token = secrets.token_urlsafe(32)
        try:
            device_id = storage.add_device(
                device.account_id,
                body.device_name,
                token,
                settings.clock(),
                settings.max_devices_per_account,
            )
        except QuotaExceeded as refusal:
            raise refuse_quota(
                "device",
                409,
                "device_quota",
                f"this account already has {refusal.limit} active devices, the most allowed;"
                " remove one before adding another",
            ) from None
        return {"device_id": device_id, "token": token}

    @api.put("/v1/devices/self/name")
    def rename_own_device(body: NewDevice, device: Auth) -> dict[str, Any]:
        # An older client registered its name in the clear; a newer one replaces it
        # with the sealed form (app/protocol/device_names.py), and only its own.
        if not storage.rename_device(device.account_id, device.device_id, body.device_name):
            raise fail(404, "this device is not active on this account")
        return {"device_id": device.device_id}

    @api.get("/v1/devices")
    def list_devices(device: Auth) -> dict[str, Any]:
        return {
            "devices": [
                {"device_id": d, "name": name, "current": d == device.device_id}
                for d, name, revoked in storage.devices(device.account_id)
                if not revoked
            ]
        }

    @api.delete("/v1/devices/{device_id}")
    def remove_device(
        device_id: Annotated[int, PathParameter(ge=1, le=MAX_DEVICE_ID)], device: Auth
    ) -> dict[str, Any]:
        if not storage.revoke_device(device.account_id, device_id):
            raise fail(404, "no such device on this account")
        # Its push connections close now (other instances: the NOTIFY revoke sent).
        hub.wake(device.account_id, device_id, event=DEVICE_REMOVED_EVENT)
        return {"removed": device_id}

    @api.post("/v1/tokens/revoke")
    def revoke_token(device: Auth) -> dict[str, Any]:
        if storage.revoke_device(device.account_id, device.device_id):
            hub.wake(device.account_id, device.device_id, event=DEVICE_REMOVED_EVENT)
        return {"revoked": device.device_id}

    # ---- device lists (docs/protocol.md §13) ---------------------------------------
    @api.put("/v1/devices/list")
    def publish_device_list(body: DeviceListUpload, device: Auth) -> dict[str, Any]:
        signed = _unb64(body.device_list, "device_list", MAX_DEVICE_LIST_BYTES)
        if len(signed) < DEVICE_LIST_HEADER_BYTES:
            raise fail(400, "a device list is too short to hold its format and version")
        version = device_list_version(signed)
        outcome = storage.publish_device_list(
            device.account_id, device.device_id, version, signed, settings.clock()
        )
        if outcome.outcome == "stale":
            raise fail(
                409,
                "a device list with this or a newer version is already published"
                f" (version {outcome.version}); sign a newer one",
                code="stale_device_list",
            )
        for other in outcome.others:
            hub.wake(device.account_id, other, event=DEVICE_LIST_EVENT)
        return {"version": outcome.version}

    def published_list(account_id: int) -> str | None:
        stored = storage.device_list(account_id)
        return None if stored is None else _b64(stored[1])

    @api.get("/v1/users/{username}/device-list")
    def fetch_device_list(
        username: Annotated[str, PathParameter(max_length=64)], device: Auth
    ) -> dict[str, Any]:
        account_id = storage.account_id(username.lower())
        if account_id is None:
            raise fail(404, "no such user")
        return {"username": username.lower(), "device_list": published_list(account_id)}

    # ---- prekeys -----------------------------------------------------------------
    def stock_body(stock: tuple[int, int]) -> dict[str, Any]:
        return {
            "one_time_prekeys": stock[0],
            "one_time_kem_prekeys": stock[1],
            "low": min(stock) < 10,
        }

    @api.put("/v1/keys")
    def upload_keys(body: KeyUpload, device: Auth) -> dict[str, Any]:
        def entries(items: list[KeyEntry], what: str) -> list[tuple[int, bytes]]:
            return [(item.id, _unb64(item.key, what, 4096)) for item in items]

        try:
            stock = storage.upload_keys(
                device.account_id,
                device.device_id,
                _unb64(body.identity, "identity", 512) if body.identity else None,
                _unb64(body.signed_prekey, "signed_prekey", 512) if body.signed_prekey else None,
                _unb64(body.last_resort_kem_prekey, "last_resort_kem_prekey", 4096)
                if body.last_resort_kem_prekey
                else None,
                entries(body.one_time_prekeys, "one_time_prekeys"),
                entries(body.one_time_kem_prekeys, "one_time_kem_prekeys"),
                settings.max_one_time_prekeys,
            )
        except QuotaExceeded as refusal:
            raise refuse_quota(
                "prekey",
                409,
                "prekey_quota",
                f"a device stores at most {refusal.limit} one-time prekeys of each kind;"
                " nothing of this upload was stored: upload more when the stock runs low",
            ) from None
        if stock is None:
            raise fail(409, "a device's identity key cannot change; register a new device")
        return stock_body(stock)

    @api.get("/v1/keys/status")
    def key_status(device: Auth) -> dict[str, Any]:
        return stock_body(storage.stock(device.account_id, device.device_id))

    @api.get("/v1/users/{username}/keys")
    def fetch_keys(
        username: Annotated[str, PathParameter(max_length=64)], device: Auth
    ) -> dict[str, Any]:
        account_id = storage.account_id(username.lower())
        if account_id is None:
            raise fail(404, "no such user")
        fetched = storage.fetch_bundles(
            account_id, device.account_id, settings.clock(), handout_limits
        )
        bundles = fetched.bundles
        if not bundles:
            raise fail(404, "that user has no device with published keys")
        if fetched.withheld:
            # Served all the same: a session starts on the signed and last-resort keys.
            metrics.count("prekey_withheld_total", limit=fetched.withheld)
        if fetched.allowance_used_up:
            metrics.count("prekey_drain_suspected_total")
        # Low stock wakes the owner's devices to refill, whoever drained it.
        for bundle in bundles:
            stock = storage.stock(account_id, bundle["device_id"])
            if min(stock) < 10:
                hub.wake(account_id, bundle["device_id"], keys=True)

        def one_time(entry: tuple[int, bytes] | None) -> dict[str, Any] | None:
            return None if entry is None else {"id": entry[0], "key": _b64(entry[1])}

        return {
            "username": username.lower(),
            # The list says which of these devices the account stands behind; a
            # client encrypts to no other (docs/protocol.md §13).
            "device_list": published_list(account_id),
            "devices": [
                {
                    "device_id": b["device_id"],
                    "identity": _b64(b["identity"]),
                    "signed_prekey": _b64(b["signed_prekey"]),
                    "last_resort_kem_prekey": _b64(b["last_resort_kem_prekey"]),
                    "one_time_prekey": one_time(b["one_time_prekey"]),
                    "one_time_kem_prekey": one_time(b["one_time_kem_prekey"]),
                }
                for b in bundles
            ],
        }

    # ---- mailbox -----------------------------------------------------------------
    def recipients(
        body: SendRequest, sender: DeviceRow
    ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], NewEnvelope]]]:
        """Every message checked and addressed before anything is stored, so a bad
        message in a fan-out rejects the request without leaving half of it queued."""
        now = settings.clock()
        accounts: dict[str, int | None] = {}
        results: list[dict[str, Any]] = []
        to_store: list[tuple[dict[str, Any], NewEnvelope]] = []
        for message in body.messages:
            if not CLIENT_ID.match(message.id):
                raise fail(400, "a message id is 1-64 characters: letters, digits, '-' or '_'")
            payload = _unb64(message.body, "body", settings.max_envelope_bytes)
            recipient = message.recipient.lower()
            if recipient not in accounts:
                accounts[recipient] = storage.account_id(recipient)
            account_id = accounts[recipient]
            if account_id is None or not storage.active_device(account_id, message.device_id):
                results.append({"id": message.id, "status": "unknown_recipient"})
                continue
            results.append({"id": message.id})
            to_store.append(
                (
                    results[-1],
                    NewEnvelope(
                        account_id,
                        message.device_id,
                        message.id,
                        sender.username,
                        sender.device_id,
                        payload,
                        now,
                    ),
                )
            )
        return results, to_store

    @api.post("/v1/messages")
    async def send(body: SendRequest, device: Auth) -> dict[str, Any]:
        results, to_store = await gate.read(recipients, body, device)
        await store_envelopes(to_store)
        return {"results": results}

    async def store_envelopes(to_store: list[tuple[dict[str, Any], NewEnvelope]]) -> None:
        """Queues checked envelopes, filling in each one's result."""
        envelopes = [envelope for _, envelope in to_store]
        statuses = await gate.enqueue(envelopes, mailbox_quota) if envelopes else []
        for (result, envelope), status in zip(to_store, statuses, strict=True):
            if status in {"quota", "quota_bytes"}:
                # Per recipient, not for the request: the other recipients of a group
                # message were queued, and only this copy is to be sent again later.
                result["status"] = "mailbox_full"
                result["retry_after"] = MAILBOX_FULL_RETRY_SECONDS
                metrics.count("mailbox_full_total")
                metrics.count(
                    "quota_refusals_total",
                    kind="mailbox_envelopes" if status == "quota" else "mailbox_bytes",
                )
                continue
            result["status"] = status
            if status == "queued":
                metrics.count("envelopes_queued_total")
                hub.wake(envelope.account_id, envelope.device_id)

    # ---- sealed sender (docs/relay-api.md, "Sealed sender") ----------------------
    @api.get("/v1/certificate")
    def sender_certificate(device: Auth) -> dict[str, Any]:
        identity = storage.device_identity(device.account_id, device.device_id)
        if identity is None:
            raise fail(409, "publish this device's keys before asking for a sender certificate")
        expires = settings.clock() + settings.sender_certificate_ms
        certificate = SenderCertificate.issue(
            certificate_key, device.username, device.device_id, identity, expires
        )
        return {"certificate": _b64(certificate.to_bytes()), "expires": expires}

    @api.put("/v1/sealed/access")
    def sealed_access(body: SealedAccess, device: Auth) -> dict[str, Any]:
        key = None
        if body.access_key is not None:
            key = _unb64(body.access_key, "access_key", ACCESS_KEY_LENGTH)
            if len(key) != ACCESS_KEY_LENGTH:
                raise fail(400, f"an access key is {ACCESS_KEY_LENGTH} bytes")
        storage.set_sealed_access(device.account_id, device.device_id, key, body.allow_anyone)
        return {"access_key": key is not None, "allow_anyone": body.allow_anyone}

    def sealed_recipients(
        body: SealedSendRequest,
    ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], NewEnvelope]], list[str]]:
        """As `recipients`, with no sender: each message's delivery token is checked
        against its recipient device's (or that device accepts sealed mail from
        anyone). Returns the results, what to store, and the rate-limit key of each
        stored one."""
        now = settings.clock()
        results: list[dict[str, Any]] = []
        to_store: list[tuple[dict[str, Any], NewEnvelope]] = []
        buckets: list[str] = []
        for message in body.messages:
            if not CLIENT_ID.match(message.id):
                raise fail(400, "a message id is 1-64 characters: letters, digits, '-' or '_'")
            payload = _unb64(message.body, "body", settings.max_envelope_bytes)
            presented = (
                None
                if message.access_key is None
                else _unb64(message.access_key, "access_key", ACCESS_KEY_LENGTH)
            )
            account_id = storage.account_id(message.recipient.lower())
            access = (
                None if account_id is None else storage.sealed_access(account_id, message.device_id)
            )
            if account_id is None or access is None:
                results.append({"id": message.id, "status": "unknown_recipient"})
                continue
            stored, anyone = access
            if (
                presented is not None
                and stored is not None
                and constant_time_equal(presented, stored)
            ):
                bucket = "token:" + sha256(presented).hex()
            elif anyone:
                bucket = f"anyone:{account_id}:{message.device_id}"
            else:
                metrics.count("sealed_refused_total")
                results.append({"id": message.id, "status": "access_denied"})
                continue
            results.append({"id": message.id})
            to_store.append(
                (
                    results[-1],
                    NewEnvelope(
                        account_id, message.device_id, message.id, None, None, payload, now
                    ),
                )
            )
            buckets.append(bucket)
        return results, to_store, buckets

    @api.post("/v1/sealed/messages")
    async def send_sealed(body: SealedSendRequest, request: Request) -> dict[str, Any]:
        # No token, ever: a sealed send must not be linkable to an account.
        if request.headers.get("authorization"):
            raise fail(400, "a sealed send carries no Authorization header")
        limit("ip:" + client_key(request))
        client = request.client
        connection = f"{client.host}:{client.port}" if client else "unknown"
        if sealed_limiter.take("connection:" + connection):
            metrics.count("rate_limited_total", kind="sealed")
            raise fail(
                429, "too many sealed sends; slow down", {"Retry-After": "1"}, code="rate_limited"
            )
        results, checked, buckets = await gate.read(sealed_recipients, body)
        to_store = []
        for (result, envelope), bucket in zip(checked, buckets, strict=True):
            wait = sealed_limiter.take(bucket)
            if wait:
                metrics.count("rate_limited_total", kind="sealed")
                result["status"] = "rate_limited"
                result["retry_after"] = _wait_seconds(wait * 1000)
                continue
            to_store.append((result, envelope))
        await store_envelopes(to_store)
        metrics.count("sealed_envelopes_total", sum(1 for _, e in to_store))
        return {"results": results}

    def envelopes_for(device: DeviceRow, after: int, limit_count: int) -> list[dict[str, Any]]:
        rows = storage.pending(
            device.account_id,
            device.device_id,
            after,
            limit_count,
            settings.clock() - settings.envelope_retention_ms,
        )
        return [dict(row, body=_b64(row["body"])) for row in rows]

    @api.get("/v1/messages")
    async def fetch_messages(
        device: Auth,
        after: Annotated[int, Query(ge=0, le=MAX_STORED_INT)] = 0,
        limit_count: Annotated[int, Query(alias="limit", ge=1, le=1000)] = 500,
    ) -> dict[str, Any]:
        return {"envelopes": await gate.read(envelopes_for, device, after, limit_count)}

    @api.post("/v1/messages/ack")
    async def ack(body: AckRequest, device: Auth) -> dict[str, Any]:
        removed = await gate.write(storage.ack, device.account_id, device.device_id, body.seqs)
        metrics.count("envelopes_acked_total", removed)
        return {"removed": removed}

    @api.websocket("/v1/push")
    async def push(websocket: WebSocket) -> None:
        if "token" in websocket.query_params:
            # A token in the URL lands in every proxy's and library's URL log.
            await websocket.close(code=4400, reason="send the token in the Authorization header")
            return
        authorization = websocket.headers.get("authorization", "")
        token = authorization[7:].strip() if authorization.startswith("Bearer ") else ""
        device = await gate.read(storage.device_for_token, token) if token else None
        if device is None:
            await websocket.close(code=4401, reason="the token is unknown")
            return
        await websocket.accept()
        if device.revoked:
            # Accepted first: a close before the handshake reaches the client as a
            # bare HTTP 403, and a removed device should learn why and stop trying.
            await websocket.close(code=DEVICE_REMOVED_CLOSE, reason=DEVICE_REMOVED_MESSAGE)
            return
        key = (device.account_id, device.device_id)
        subscription = hub.subscribe(key)
        metrics.gauge_add("push_connections", 1)
        last_sent = 0
        closed = asyncio.Event()

        async def still_active() -> bool:
            current = await gate.read(storage.device_for_token, token)
            return current is not None and not current.revoked

        async def notice_close() -> None:
            # Clients send nothing on this socket, so a receive only ever returns its
            # close. Without it a handler learned of a gone client at its next send,
            # up to PUSH_IDLE_SECONDS later, holding its memory and subscription.
            with contextlib.suppress(Exception):
                while (await websocket.receive())["type"] != "websocket.disconnect":
                    pass
            closed.set()
            subscription.event.set()

        watcher = asyncio.create_task(notice_close())
        try:
            # A removal between the lookup above and the subscription woke no one.
            subscription.removed = not await still_active()
            while not closed.is_set():
                subscription.event.clear()
                if subscription.removed:
                    await websocket.close(code=DEVICE_REMOVED_CLOSE, reason=DEVICE_REMOVED_MESSAGE)
                    break
                if subscription.device_list_changed:
                    subscription.device_list_changed = False
                    published = await gate.read(storage.device_list, device.account_id)
                    if published is not None:
                        message = {"type": "device_list", "version": published[0]}
                        await websocket.send_text(json.dumps(message))
                batch = await gate.read(envelopes_for, device, last_sent, PUSH_BATCH)
                for envelope in batch:
                    await websocket.send_text(json.dumps({"type": "envelope", **envelope}))
                    last_sent = envelope["seq"]
                if len(batch) == PUSH_BATCH:
                    continue  # more are waiting
                if subscription.keys_changed:
                    subscription.keys_changed = False
                    stock = await gate.read(storage.stock, *key)
                    if min(stock) < 10:
                        await websocket.send_text(json.dumps({"type": "keys_low"}))
                if not await subscription.wait(PUSH_IDLE_SECONDS):
                    # A removal's wake-up may have been lost (another instance's
                    # NOTIFY while this one's listener reconnected).
                    if not await still_active():
                        subscription.removed = True
                        continue
                    await websocket.send_text(json.dumps({"type": "ping"}))
                    # Another relay instance may have handed out keys meanwhile.
                    subscription.keys_changed = True
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            watcher.cancel()
            hub.unsubscribe(key, subscription)
            metrics.gauge_add("push_connections", -1)

    # ---- link mailboxes (docs/relay-api.md, "Linking a device") --------------------
    # Anonymous: a new device has no token yet, and the relay need not learn which
    # account links. The id is the capability; every request is limited per address.
    def link_limit(request: Request, bucket: TokenBucket = link_limiter) -> None:
        limit("ip:" + client_key(request))
        wait = bucket.take("link:" + client_key(request))
        if wait:
            metrics.count("rate_limited_total", kind="link")
            raise fail(
                429,
                "too many link requests from this address; slow down",
                {"Retry-After": str(_wait_seconds(wait * 1000))},
                code="rate_limited",
            )

    def link_id(mailbox_id: str) -> str:
        canonical = mailbox_id.upper()  # read aloud or typed: any case will do
        if not LINK_ID.match(canonical):
            raise fail(400, "a link request id is 8 characters: letters A-Z and digits 2-7")
        return canonical

    def link_role(role: str) -> int:
        if role not in LINK_ROLES:
            raise fail(400, "a link mailbox role is 'new' or 'existing'")
        return LINK_ROLES[role]

    LinkId = Annotated[str, PathParameter(max_length=64)]
    LinkRole = Annotated[str, PathParameter(max_length=64)]

    @api.post("/v1/provisioning", status_code=201)
    async def open_link_mailbox(body: NewLinkMailbox, request: Request) -> dict[str, Any]:
        link_limit(request)
        public_key = _unb64(body.public_key, "public_key", 1024)
        if len(public_key) != LINK_PUBLIC_KEY_BYTES:
            raise fail(400, f"public_key is {LINK_PUBLIC_KEY_BYTES} bytes")
        link_limit(request, link_open_limiter)
        now = settings.clock()
        expires_at = now + settings.link_mailbox_ms
        for _attempt in range(8):  # 40-bit ids: a collision is already rare
            mailbox_id = new_link_id()
            try:
                opened = await gate.write(
                    storage.open_link_mailbox,
                    mailbox_id,
                    public_key,
                    now,
                    expires_at,
                    settings.max_link_mailboxes,
                )
            except QuotaExceeded:
                refusal = refuse_quota(
                    "link_mailboxes",
                    503,
                    "link_capacity",
                    "this relay has as many link requests open as it allows; try again in a minute",
                    60_000,
                )
                raise refusal from None
            if opened:
                metrics.count("link_mailboxes_opened_total")
                return {"id": mailbox_id, "expires_at": expires_at}
        raise fail(503, "could not draw a free link request id; try again")

    @api.get("/v1/provisioning/{mailbox_id}")
    async def link_mailbox_key(mailbox_id: LinkId, request: Request) -> dict[str, Any]:
        link_limit(request)
        found = await gate.read(storage.link_mailbox, link_id(mailbox_id), settings.clock())
        if found is None:
            raise fail(404, LINK_NOT_FOUND)
        return {"public_key": _b64(found[0]), "expires_at": found[1]}

    @api.post("/v1/provisioning/{mailbox_id}/messages/{role}", status_code=201)
    async def post_link_message(
        mailbox_id: LinkId, role: LinkRole, body: LinkMessage, request: Request
    ) -> dict[str, Any]:
        link_limit(request)
        mailbox, code = link_id(mailbox_id), link_role(role)
        payload = _unb64(body.body, "body", settings.max_link_body_bytes)
        try:
            index = await gate.write(
                storage.post_link_message,
                mailbox,
                code,
                payload,
                settings.clock(),
                settings.max_link_messages,
            )
        except QuotaExceeded as refusal:
            raise refuse_quota(
                "link_messages",
                409,
                "link_quota",
                f"a link request holds at most {refusal.limit} messages from each side",
            ) from None
        if index is None:
            raise fail(404, LINK_NOT_FOUND)
        links.wake(mailbox)
        return {"index": index}

    @api.get("/v1/provisioning/{mailbox_id}/messages/{role}")
    async def link_messages(
        mailbox_id: LinkId,
        role: LinkRole,
        request: Request,
        after: Annotated[int, Query(ge=-1, le=MAX_STORED_INT)] = -1,
        wait: Annotated[float, Query(ge=0, le=MAX_LINK_WAIT_SECONDS, allow_inf_nan=False)] = 0,
    ) -> dict[str, Any]:
        link_limit(request)
        mailbox, code = link_id(mailbox_id), link_role(role)
        deadline = time.monotonic() + wait
        while True:
            # Registered before the read, so a post between the read and the wait
            # still wakes this poll.
            woken = links.add(mailbox)
            try:
                found = await gate.read(
                    storage.link_messages, mailbox, code, after, settings.clock()
                )
                if found is None:
                    raise fail(404, LINK_NOT_FOUND)
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return {
                        "messages": [{"index": index, "body": _b64(data)} for index, data in found]
                    }
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=remaining)
            finally:
                links.discard(mailbox, woken)

    @api.delete("/v1/provisioning/{mailbox_id}")
    async def close_link_mailbox(mailbox_id: LinkId, request: Request) -> dict[str, Any]:
        link_limit(request)
        mailbox = link_id(mailbox_id)
        if not await gate.write(storage.close_link_mailbox, mailbox, settings.clock()):
            raise fail(404, LINK_NOT_FOUND)
        links.wake(mailbox)  # a long poll on it answers 404 now
        return {"id": mailbox, "closed": True}

    # ---- attachments -------------------------------------------------------------
    def attachment_refusal(retry_after_ms: int) -> RelayHTTPError:
        refusal = refuse_quota(
            "attachment",
            429,
            "attachment_quota",
            f"an account may upload {settings.attachment_bytes_per_day:,} bytes of attachments"
            " in any 24 hours, and this one does not fit in what is left; try again in"
            " Retry-After seconds",
            retry_after_ms,
        )
        # Refused before the body was read to its end: the rest is not read either.
        refusal.headers = {**(refusal.headers or {}), "Connection": "close"}
        return refusal

    @api.post("/v1/attachments", status_code=201)
    async def upload_attachment(request: Request, device: Auth) -> dict[str, Any]:
        # Its size limit is LimitRequestBodies's; the daily allowance is checked
        # before the body is read, while it streams, and when it is recorded.
        daily = settings.attachment_bytes_per_day
        declared = request.headers.get("content-length")
        wanted = int(declared) if declared and declared.isdigit() else 1
        allowance, wait_ms = await gate.read(
            storage.attachment_allowance, device.account_id, settings.clock(), daily, wanted
        )
        if wait_ms:
            raise attachment_refusal(wait_ms)
        blob_id = secrets.token_hex(16)
        tmp = blobs_dir / f".{blob_id}.part"
        size = 0
        try:
            with _create_private(tmp) as handle:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > allowance:
                        _, wait_ms = await gate.read(
                            storage.attachment_allowance,
                            device.account_id,
                            settings.clock(),
                            daily,
                            size,
                        )
                        raise attachment_refusal(wait_ms)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            if size == 0:
                raise fail(400, "the attachment is empty")
            os.replace(tmp, blobs_dir / blob_id)
        finally:
            # Best effort: a failing clean-up must not hide the error that led here.
            with contextlib.suppress(OSError):
                tmp.unlink()
        try:
            # Checked again as it is recorded: concurrent uploads of one account
            # could each have fitted the allowance read before they started.
            await gate.write(
                storage.add_attachment, blob_id, size, settings.clock(), device.account_id, daily
            )
        except QuotaExceeded as refusal:
            (blobs_dir / blob_id).unlink(missing_ok=True)
            raise attachment_refusal(refusal.retry_after_ms) from None
        metrics.count("attachments_uploaded_total")
        return {"id": blob_id, "size": size}

    @api.get("/v1/attachments/{blob_id}", response_model=None)
    def download_attachment(blob_id: str, device: Auth) -> FileResponse:
        if not BLOB_ID.match(blob_id):
            raise fail(400, "an attachment id is 32 hexadecimal digits")
        meta = storage.attachment(blob_id)
        path = blobs_dir / blob_id
        if meta is None or not path.exists():
            raise fail(404, "no such attachment (it may have expired)")
        return FileResponse(path, media_type="application/octet-stream")

    # ---- vault pass-through ------------------------------------------------------
    async def forward(
        method: str,
        path: str,
        body: bytes | None,
        request: Request,
        urls: tuple[str, ...] | None = None,
    ) -> Response:
        wait = vault_limiter.take("vault:" + client_key(request))
        if wait:
            metrics.count("rate_limited_total", kind="vault")
            raise fail(
                429,
                "too many vault requests; slow down",
                {"Retry-After": str(int(wait) + 1)},
                code="rate_limited",
            )
        nodes = settings.vault_urls if urls is None else urls
        if not nodes:
            raise fail(503, "this relay has no backup vault configured")
        async with httpx.AsyncClient(timeout=15.0) as client:
            for base in nodes:
                try:
                    upstream = await client.request(
                        method,
                        base.rstrip("/") + path,
                        content=body,
                        headers={"content-type": "application/octet-stream"},
                    )
                except httpx.HTTPError:
                    metrics.count("vault_failover_total")
                    continue
                if upstream.status_code >= 500:
                    metrics.count("vault_failover_total")
                    continue
                return Response(
                    upstream.content,
                    status_code=upstream.status_code,
                    media_type=upstream.headers.get("content-type", "application/octet-stream"),
                )
        raise fail(503, "no backup vault node is reachable; try again later")

    @api.post("/v1/vault/{op}")
    async def vault_call(op: str, request: Request) -> Response:
        if not VAULT_OP.match(op):
            raise fail(400, "unknown vault operation")
        body = await request.body()  # at most VAULT_BODY_BYTES: LimitRequestBodies
        return await forward("POST", f"/v1/vault/{op}", body, request)

    @api.get("/v1/vault/fleet")
    async def vault_fleet(request: Request) -> Response:
        return await forward("GET", "/v1/vault/fleet", None, request)

    def domain_nodes(domain: int) -> tuple[str, ...]:
        if domain not in settings.vault_domains:
            # This relay serves no such domain (configuration, not an outage).
            raise fail(404, f"this relay serves no split-vault domain {domain}")
        return settings.vault_domains[domain]

    VaultDomain = Annotated[int, PathParameter(ge=1, le=3)]

    # The split vault: the same pass-through, to one domain's nodes. Each domain is
    # a vault of its own; the relay learns which domains a client asks, no more.
    @api.post("/v1/vault/domains/{domain}/{op}")
    async def vault_domain_call(domain: VaultDomain, op: str, request: Request) -> Response:
        nodes = domain_nodes(domain)
        if not VAULT_OP.match(op):
            raise fail(400, "unknown vault operation")
        body = await request.body()
        return await forward("POST", f"/v1/vault/{op}", body, request, nodes)

    @api.get("/v1/vault/domains/{domain}/fleet")
    async def vault_domain_fleet(domain: VaultDomain, request: Request) -> Response:
        return await forward("GET", "/v1/vault/fleet", None, request, domain_nodes(domain))

    return api
