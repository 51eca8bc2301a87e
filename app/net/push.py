"""The push listener: a WebSocket to the relay that reconnects and resumes.

On every (re)connection the relay first sends everything still pending, so a
client that was offline catches up without a separate fetch. Duplicates across
reconnects are possible (an envelope pushed but not yet acknowledged); the client
drops them by (sender, client id).

The connection lives in an asyncio loop on the listener's own thread, so only that
thread ever touches the TLS session. (The threaded `websockets.sync` client reads
on one thread while `close()` and keepalive pings write from others; OpenSSL
forbids concurrent calls on one session, and the test suite caught it as a rare
segmentation fault inside `SSL_read`.) Other threads reach the loop only through
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import threading
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from app.net.relay_client import Envelope

log = logging.getLogger(__name__)

OPEN_TIMEOUT_SECONDS = 10
# The relay's close code for a device removed from its account (docs/relay-api.md).
DEVICE_REMOVED_CLOSE = 4410
# How long stop() waits for the thread: enough to close an open connection
# cleanly, not to wait out a handshake that will never finish.
STOP_WAIT_SECONDS = 1.0


class PushListener:
    def __init__(
        self,
        url: str,
        ca_file: str,
        token: str,
        *,
        on_envelope: Callable[[Envelope], None],
        on_state: Callable[[bool], None],
        on_keys_low: Callable[[], None] | None = None,
        on_removed: Callable[[], None] | None = None,
        on_device_list: Callable[[], None] | None = None,
        max_backoff: float = 15.0,
    ) -> None:
        self._url = url
        self._token = token
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self._on_envelope = on_envelope
        self._on_state = on_state
        self._on_keys_low = on_keys_low
        self._on_removed = on_removed
        self._on_device_list = on_device_list
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        # Held while a callback runs, and by stop() as it sets _stop: once stop()
        # has returned, no callback starts.
        self._reporting = threading.RLock()
        self._thread: threading.Thread | None = None
        # Set by the listener thread once its loop runs; used only through
        # call_soon_threadsafe from other threads.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._connection: ClientConnection | None = None
        self._closing: set[asyncio.Future[None]] = set()
        self._ready = threading.Event()
        self.connected = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="push-listener", daemon=True)
        self._thread.start()
        self._ready.wait()

    def stop(self) -> None:
        """Returns at once even while a handshake is stalled (a relay that accepts
        connections but never answers): the connection attempt is cancelled, and
        nothing more is reported after this call."""
        with self._reporting:
            self._stop.set()
            was_connected, self.connected = self.connected, False
        self._in_loop(self._cancel)
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_SECONDS)
        if was_connected:
            self._on_state(False)

    def reconnect_now(self) -> None:
        """Skip the current backoff wait (e.g. the user pressed "retry")."""
        self._in_loop(self._set_wake)

    def drop_connection(self) -> None:
        """Closes the current connection; the listener reconnects, and the relay
        then pushes everything still pending again."""
        self._in_loop(self._close_connection)

    # ---- called on the listener thread ------------------------------------------
    def _in_loop(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has already finished
            loop.call_soon_threadsafe(callback)

    def _cancel(self) -> None:
        if self._main is not None:
            self._main.cancel()

    def _close_connection(self) -> None:
        if self._connection is not None:
            closing = asyncio.ensure_future(self._connection.close())
            # The loop keeps only weak references to tasks.
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _set_state(self, connected: bool) -> None:
        with self._reporting:
            if self._stop.is_set() or connected == self.connected:
                return
            self.connected = connected
            self._on_state(connected)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            self._main = loop.create_task(self._listen())
            self._wake = asyncio.Event()
            self._loop = loop
            self._ready.set()
            if self._stop.is_set():
                self._main.cancel()
            loop.run_until_complete(asyncio.gather(self._main, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            self._ready.set()
            self._loop = None
            loop.close()
        self._set_state(False)

    async def _listen(self) -> None:
        assert self._wake is not None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                async with connect(
                    self._url,
                    # In a header, not the URL: URLs end up in access logs.
                    additional_headers={"Authorization": f"Bearer {self._token}"},
                    ssl=self._ssl,
                    open_timeout=OPEN_TIMEOUT_SECONDS,
                    close_timeout=2,
                    max_size=2**20,
                    # Frames carry ciphertext, which does not compress.
                    compression=None,
                ) as connection:
                    self._connection = connection
                    self._set_state(True)
                    backoff = 0.5
                    async for frame in connection:
                        self._handle(frame)
                if connection.close_code == DEVICE_REMOVED_CLOSE:
                    self._removed()
                    break
            except InvalidStatus:
                self._set_state(False)
            except ConnectionClosed as closed:
                self._set_state(False)
                if closed.rcvd is not None and closed.rcvd.code == DEVICE_REMOVED_CLOSE:
                    self._removed()
                    break
            except (OSError, InvalidHandshake, TimeoutError):
                self._set_state(False)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("push connection failed unexpectedly; retrying", exc_info=True)
                self._set_state(False)
            finally:
                self._connection = None
            if self._stop.is_set():
                break
            delay = backoff * (0.5 + random.random())  # noqa: S311 - jitter
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            backoff = min(backoff * 2, self._max_backoff)

    def _removed(self) -> None:
        """The relay closed with "this device was removed from the account": no
        reconnecting (the token is dead); the client locks itself."""
        self._set_state(False)
        if self._on_removed is not None:
            self._report(self._on_removed)

    def _handle(self, frame: str | bytes) -> None:
        try:
            message: dict[str, Any] = json.loads(frame)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        kind = message.get("type")
        if kind == "envelope":
            try:
                envelope = Envelope.from_json(message)
            except (KeyError, TypeError, ValueError):
                return
            self._report(self._on_envelope, envelope)
        elif kind == "keys_low" and self._on_keys_low is not None:
            self._report(self._on_keys_low)
        elif kind == "device_list" and self._on_device_list is not None:
            self._report(self._on_device_list)

    def _report(self, callback: Callable[..., None], *args: Any) -> None:
        with self._reporting:
            if not self._stop.is_set():
                callback(*args)
