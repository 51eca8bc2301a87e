# No `from __future__ import annotations` here: FastAPI must see the dependency
# types defined inside create_app() at decoration time.
"""The relay's HTTP application: accounts, prekeys, mailbox, push, attachments,
vault pass-through. It routes ciphertext; bodies are opaque to it."""

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from app import __version__
from relay.gate import gate_for
from relay.metrics import Metrics
from relay.storage import DeviceRow, NewEnvelope, PostgresStorage, Storage, open_storage

log = logging.getLogger("relay")

USERNAME = re.compile(r"^[a-z0-9_.-]{3,32}$")
CLIENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BLOB_ID = re.compile(r"^[0-9a-f]{32}$")
VAULT_OP = re.compile(r"^[a-z_]{1,32}$")
DAY_MS = 86_400_000
PUSH_BATCH = 500
PUSH_IDLE_SECONDS = 20
MAILBOX_FULL_RETRY_SECONDS = 60  # a ping this often keeps middleboxes from dropping idle sockets


@dataclass(frozen=True)
class RelaySettings:
    data_dir: Path
    database_url: str | None = None
    vault_urls: tuple[str, ...] = ()
    envelope_retention_ms: int = 30 * DAY_MS
    attachment_retention_ms: int = 30 * DAY_MS
    max_attachment_bytes: int = 100 * 1024 * 1024
    max_envelope_bytes: int = 256 * 1024
    mailbox_quota: int = 10_000
    rate_per_second: float = 50.0
    rate_burst: float = 200.0
    # Many people can share one address (NAT, an office); the address bucket only
    # stops floods, the account bucket keeps one client from crowding out others.
    address_rate_per_second: float = 1000.0
    address_rate_burst: float = 4000.0
    vault_rate_per_second: float = 5.0
    vault_rate_burst: float = 20.0
    bench_echo: bool = False
    clock: Callable[[], int] = field(default=lambda: int(time.time() * 1000))


class RelayHTTPError(HTTPException):
    pass


def fail(status: int, message: str, headers: dict[str, str] | None = None) -> RelayHTTPError:
    return RelayHTTPError(status_code=status, detail=message, headers=headers)


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

    def wake(self, account_id: int, device_id: int, *, keys: bool = False) -> None:
        """Thread-safe."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake, (account_id, device_id), keys)

    def _wake(self, key: tuple[int, int], keys: bool) -> None:
        for subscription in list(self._subscriptions.get(key, ())):
            subscription.keys_changed |= keys
            subscription.event.set()


class NewAccount(BaseModel):
    username: str = Field(max_length=64)
    device_name: str = Field(min_length=1, max_length=64)


class NewDevice(BaseModel):
    device_name: str = Field(min_length=1, max_length=64)


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
    device_id: int = Field(ge=1, le=2**31)
    body: str = Field(max_length=400_000)


class SendRequest(BaseModel):
    messages: list[OutgoingEnvelope] = Field(min_length=1, max_length=1000)


class AckRequest(BaseModel):
    seqs: list[int] = Field(max_length=1000)


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


def _json_log(**fields: Any) -> None:
    log.info(json.dumps(fields, separators=(",", ":")))


class ObserveRequests:
    """Counts and times every HTTP request and logs one JSON line: method, route
    template, status and milliseconds, never a body, token or username.

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

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.observe(scope["method"], template, status, elapsed)
            _json_log(
                method=scope["method"], route=template, status=status, ms=round(elapsed * 1000, 2)
            )


def create_app(settings: RelaySettings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blobs_dir = settings.data_dir / "attachments"
    blobs_dir.mkdir(exist_ok=True)
    storage: Storage = open_storage(settings.data_dir, settings.database_url)
    gate = gate_for(storage)
    hub = PushHub()
    metrics = Metrics()
    limiter = TokenBucket(settings.rate_per_second, settings.rate_burst)
    address_limiter = TokenBucket(settings.address_rate_per_second, settings.address_rate_burst)
    vault_limiter = TokenBucket(settings.vault_rate_per_second, settings.vault_rate_burst)
    stop = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(_api: FastAPI) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        gate.start(asyncio.get_running_loop())
        threads: list[threading.Thread] = []
        if isinstance(storage, PostgresStorage):
            listener = threading.Thread(
                target=storage.listen, args=(hub.wake, stop), daemon=True, name="pg-listen"
            )
            listener.start()
            threads.append(listener)

        def janitor() -> None:
            while not stop.wait(60):
                purge()

        cleaner = threading.Thread(target=janitor, daemon=True, name="janitor")
        cleaner.start()
        purge()
        yield
        stop.set()
        gate.stop()
        storage.close()

    def purge() -> None:
        now = settings.clock()
        with contextlib.suppress(Exception):
            storage.purge(now - settings.envelope_retention_ms)
            for blob_id in storage.expired_attachments(now - settings.attachment_retention_ms):
                with contextlib.suppress(FileNotFoundError):
                    (blobs_dir / blob_id).unlink()

    api = FastAPI(
        title="Cipherline relay",
        version=__version__,
        description="Store-and-forward of end-to-end encrypted envelopes.",
        lifespan=lifespan,
    )
    api.state.storage = storage
    api.state.purge = purge

    # ---- errors: always JSON with a sentence, never a traceback ------------------
    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    @api.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
        message = first.get("msg", "invalid request")
        return JSONResponse({"error": f"{where or 'request'}: {message}"[:300]}, status_code=422)

    @api.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.error("unexpected %s", type(error).__name__)
        return JSONResponse({"error": "the relay hit an internal error"}, status_code=500)

    api.add_middleware(ObserveRequests, metrics=metrics)

    # ---- auth --------------------------------------------------------------------
    def client_key(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def limit(key: str) -> None:
        wait = (address_limiter if key.startswith("ip:") else limiter).take(key)
        if wait:
            metrics.count("rate_limited_total")
            raise fail(
                429,
                "too many requests; slow down",
                {"Retry-After": str(max(1, int(wait + 0.999)))},
            )

    async def authenticated(
        request: Request, authorization: Annotated[str | None, Header()] = None
    ) -> DeviceRow:
        limit("ip:" + client_key(request))
        if not authorization or not authorization.startswith("Bearer "):
            raise fail(401, "missing bearer token")
        device = await gate.read(storage.device_for_token, authorization[7:].strip())
        if device is None or device.revoked:
            raise fail(401, "the token is unknown or revoked")
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
        device_id = storage.add_device(device.account_id, body.device_name, token, settings.clock())
        return {"device_id": device_id, "token": token}

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
    def remove_device(device_id: int, device: Auth) -> dict[str, Any]:
        if not storage.revoke_device(device.account_id, device_id):
            raise fail(404, "no such device on this account")
        return {"removed": device_id}

    @api.post("/v1/tokens/revoke")
    def revoke_token(device: Auth) -> dict[str, Any]:
        storage.revoke_device(device.account_id, device.device_id)
        return {"revoked": device.device_id}

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
        )
        if stock is None:
            raise fail(409, "a device's identity key cannot change; register a new device")
        return stock_body(stock)

    @api.get("/v1/keys/status")
    def key_status(device: Auth) -> dict[str, Any]:
        return stock_body(storage.stock(device.account_id, device.device_id))

    @api.get("/v1/users/{username}/keys")
    def fetch_keys(username: str, device: Auth) -> dict[str, Any]:
        account_id = storage.account_id(username.lower())
        if account_id is None:
            raise fail(404, "no such user")
        bundles = storage.fetch_bundles(account_id)
        if not bundles:
            raise fail(404, "that user has no device with published keys")
        for bundle in bundles:
            stock = storage.stock(account_id, bundle["device_id"])
            if min(stock) < 10:
                hub.wake(account_id, bundle["device_id"], keys=True)

        def one_time(entry: tuple[int, bytes] | None) -> dict[str, Any] | None:
            return None if entry is None else {"id": entry[0], "key": _b64(entry[1])}

        return {
            "username": username.lower(),
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
        envelopes = [envelope for _, envelope in to_store]
        statuses = await gate.enqueue(envelopes, settings.mailbox_quota) if envelopes else []
        for (result, envelope), status in zip(to_store, statuses, strict=True):
            if status == "quota":
                # Per recipient, not for the request: the other recipients of a group
                # message were queued, and only this copy is to be sent again later.
                result["status"] = "mailbox_full"
                result["retry_after"] = MAILBOX_FULL_RETRY_SECONDS
                metrics.count("mailbox_full_total")
                continue
            result["status"] = status
            if status == "queued":
                metrics.count("envelopes_queued_total")
                hub.wake(envelope.account_id, envelope.device_id)
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
        after: Annotated[int, Query(ge=0)] = 0,
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
        if device is None or device.revoked:
            await websocket.close(code=4401, reason="the token is unknown or revoked")
            return
        await websocket.accept()
        key = (device.account_id, device.device_id)
        subscription = hub.subscribe(key)
        metrics.gauge_add("push_connections", 1)
        last_sent = 0
        try:
            while True:
                subscription.event.clear()
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
                    await websocket.send_text(json.dumps({"type": "ping"}))
                    # Another relay instance may have handed out keys meanwhile.
                    subscription.keys_changed = True
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            hub.unsubscribe(key, subscription)
            metrics.gauge_add("push_connections", -1)

    # ---- attachments -------------------------------------------------------------
    @api.post("/v1/attachments", status_code=201)
    async def upload_attachment(request: Request, device: Auth) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_attachment_bytes:
            raise fail(413, f"attachments are limited to {settings.max_attachment_bytes} bytes")
        blob_id = secrets.token_hex(16)
        tmp = blobs_dir / f".{blob_id}.part"
        size = 0
        try:
            with tmp.open("wb") as handle:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > settings.max_attachment_bytes:
                        raise fail(
                            413,
                            f"attachments are limited to {settings.max_attachment_bytes} bytes",
                        )
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            if size == 0:
                raise fail(400, "the attachment is empty")
            os.replace(tmp, blobs_dir / blob_id)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        await asyncio.to_thread(storage.add_attachment, blob_id, size, settings.clock())
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
    async def forward(method: str, path: str, body: bytes | None, request: Request) -> Response:
        wait = vault_limiter.take("vault:" + client_key(request))
        if wait:
            raise fail(
                429, "too many vault requests; slow down", {"Retry-After": str(int(wait) + 1)}
            )
        if not settings.vault_urls:
            raise fail(503, "this relay has no backup vault configured")
        async with httpx.AsyncClient(timeout=15.0) as client:
            for base in settings.vault_urls:
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
        body = await request.body()
        if len(body) > 64 * 1024:
            raise fail(413, "vault requests are limited to 64 KiB")
        return await forward("POST", f"/v1/vault/{op}", body, request)

    @api.get("/v1/vault/fleet")
    async def vault_fleet(request: Request) -> Response:
        return await forward("GET", "/v1/vault/fleet", None, request)

    return api
