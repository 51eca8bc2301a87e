"""The client runtime: the messenger core on one thread, the network on others.

- `core`: one thread owns the store and every protocol state change.
- `actions`: one thread runs user actions that may need the network first
  (fetching a contact's keys before the first message), in the order given.
- `net`: sending the outbox, acknowledging, attachments, key refills.
- the push listener's thread receives envelopes and hands them to `core`.

Results reach the UI as events through one listener callback; nothing here
imports Qt.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from app.net import (
    Conflict,
    Envelope,
    NotFound,
    OutgoingEnvelope,
    RateLimited,
    RelayClient,
    RelayError,
    RelayUnavailable,
)
from app.net.push import PushListener
from app.net.relay_client import SendOutcome
from app.protocol import ProtocolError
from app.protocol.attachments import AttachmentSecret, decrypt_attachment
from app.protocol.content import HistoryChunk
from app.protocol.device_names import MAX_NAME_CHARACTERS, open_device_name, seal_device_name
from app.protocol.device_names import PREFIX as DEVICE_NAME_PREFIX
from app.protocol.identity import PublicIdentity
from app.services import delivery, history
from app.services.account import LinkedAccount
from app.services.events import (
    ConnectionChanged,
    ConversationsChanged,
    DeviceUnlinked,
    Event,
    HistoryProgress,
    IdentityChanged,
    IncomingMessage,
    MessagesChanged,
    MessagesExpired,
    TypingChanged,
)
from app.services.events import (
    ServiceError as ServiceErrorEvent,
)
from app.services.messenger import IncomingResult, Messenger, ServiceError
from app.services.views import (
    ConversationView,
    MessageView,
    SafetyNumberView,
    SearchResultView,
    Thumbnail,
)
from app.store import OutboxItem, PassphraseProtector, Store, StoreError, WrongPassphrase
from app.store.database import HistoryChunkRow

log = logging.getLogger("cipherline.client")
# How often a running client checks its prekeys (rotation, retried uploads).
KEY_CHECK_SECONDS = 3600.0


class Closing(ServiceError):
    """The client is shutting down; late calls from the UI are dropped."""


class HistoryTransferCancelled(ServiceError):
    """A history transfer was cancelled, or the client is shutting down; starting
    it again resumes after the last chunk sent."""


T = TypeVar("T")
# The mailbox is fetched every this many ticks (at least once a second) besides
# what push delivers; how many seqs are remembered to receive each envelope once.
CATCH_UP_TICKS = 25
SEEN_SEQS = 20_000


def _whole_request(error: RelayError) -> bool:
    """Whether a refused send says nothing about its items: the relay stored none
    of them and would take them later (rate limit, overload, outage, a token to
    renew). Any other 4xx is about what the request carries."""
    return isinstance(error, RateLimited | RelayUnavailable) or error.status in (401, 403, 408)


class Client:
    def __init__(
        self, messenger: Messenger, relay: RelayClient, *, tick_seconds: float = 2.0
    ) -> None:
        self.messenger = messenger
        self.relay = relay
        relay.token = messenger.relay_token
        self._core = ThreadPoolExecutor(1, thread_name_prefix="cipherline-core")
        self._actions = ThreadPoolExecutor(1, thread_name_prefix="cipherline-actions")
        self._net = ThreadPoolExecutor(2, thread_name_prefix="cipherline-net")
        self._listener: Callable[[Event], None] = lambda _event: None
        self._flush_lock = threading.Lock()
        self._flush_wanted = threading.Event()
        # After the relay took none of a send: no flush before this (monotonic),
        # the refusals in a row, and whether it was unreachable (see _flush_failed).
        self._flush_not_before = 0.0
        self._flush_failures = 0
        self._flush_wait_unreachable = False
        self.send_backoffs = 0  # sends the relay took none of (429, 503, unreachable)
        self._stop = threading.Event()
        self._tick_seconds = tick_seconds
        self._ticker: threading.Thread | None = None
        self.push: PushListener | None = None
        self.device_list_published: Future[bool] | None = None
        self.connected = False
        self.undecryptable = 0  # quarantined: shown as "could not be decrypted"
        self.replayed = 0  # replays, dropped without a trace
        # A burst of arrivals refreshes the conversation list once and acknowledges
        # in batches, instead of once per message.
        self._conversations_pending = False
        self._ack_lock = threading.Lock()
        self._acks: list[int] = []
        self._ack_pending = False
        self._inbox_lock = threading.Lock()
        self._inbox: collections.deque[Envelope] = collections.deque()
        self._drain_pending = False
        # Envelopes taken in, by push or by the catch-up fetch, by seq: each is
        # received once however it arrives. Acknowledged ones leave the relay, so
        # only recent seqs can come twice; a batch that fails is forgotten here, so
        # that it is received when the relay delivers it again.
        self._seen_seqs: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._fetch_every = max(1.0, CATCH_UP_TICKS * tick_seconds)
        self._keys_lock = threading.Lock()  # one prekey check (and upload) at a time
        # History transfer (app/services/history.py): its own threads, since a
        # transfer waits out a relay outage for as long as it lasts. One outgoing
        # transfer at a time; one importer, woken again by each announcement.
        self._history = ThreadPoolExecutor(3, thread_name_prefix="cipherline-history")
        self._history_cancel = threading.Event()
        self._history_out_lock = threading.Lock()
        self._history_lock = threading.Lock()
        self._history_wanted = False
        self._history_running = False

    # ---- life cycle -----------------------------------------------------------
    def set_listener(self, listener: Callable[[Event], None]) -> None:
        self._listener = listener

    def _emit(self, event: Event) -> None:
        try:
            self._listener(event)
        except Exception:
            log.exception("event listener failed")

    def start(self) -> None:
        self.push = PushListener(
            self.relay.push_url(),
            self.relay.ca_file,
            self.messenger.relay_token,
            on_envelope=self._envelope_arrived,
            on_state=self._connection_changed,
            on_keys_low=self._keys_low,
            on_removed=self._removed_by_relay,
            on_device_list=self._own_list_event,
        )
        self.push.start()
        self._ticker = threading.Thread(target=self._tick, name="cipherline-ticker", daemon=True)
        self._ticker.start()
        # Rotate if due, and make the relay serve the signed prekey this device holds
        # (it may have missed an upload, or the profile may be an older copy).
        self.check_prekeys(long_lived=True)
        self.net(self._seal_plain_device_name)
        # Kept so that a caller can wait until contacts can fetch the list.
        self.device_list_published = self.net(self._publish_device_list)
        self.action(self._own_sessions)
        self.action(self._greet_after_restore)
        # History left half-imported, or half-sent, when the app last closed.
        self._import_history_soon()
        self._submit(self._history, self._resume_history_transfer)

    def _greet_after_restore(self) -> None:
        """A restored profile (now a device of its own) starts sessions with its
        contacts at once: each gets this device's list and the restore notice now,
        not at the next message, so messages to the account reach this device."""
        owed = self.core(self.messenger.owed_restore_notices).result()
        if not owed:
            return
        for name in owed:
            try:
                self._ensure_sessions([name])
            except ServiceError as error:
                log.info("no fresh session yet after the restore (%s)", error)
        self.core(self.messenger.send_owed_restore_notices).result()
        self.request_flush()

    def _own_list_event(self) -> None:
        self.net(self._own_list_published)

    def _own_list_published(self) -> None:
        """The relay says another of our devices published a list."""
        try:
            signed = self.relay.fetch_device_list(self.messenger.username)
        except RelayError as error:
            log.info("could not fetch our device list (%s)", type(error).__name__)
            return
        if signed is not None:
            self._after_receive(self.core(self.messenger.take_own_list, signed).result())

    def _own_sessions(self) -> None:
        """Sessions with our other devices, for sent transcripts and syncs."""
        own = self.messenger.username
        if self.core(self.messenger.lacks_sessions, own).result():
            try:
                self._ensure_sessions([own])
            except ServiceError as error:
                log.info("no sessions with our other devices yet (%s)", error)

    def _publish_device_list(self) -> bool:
        """Makes the relay serve our newest device list (docs/protocol.md §13): made
        the first time for an account from before lists; one the relay holds that
        is newer (another of our devices changed it) is taken instead, and one of
        an earlier installation of the account is superseded. True when published
        or already current; tried again at the next start when offline."""
        try:
            signed: bytes | None = self.core(self.messenger.own_device_list).result()
            for _attempt in range(3):
                if signed is None or self._published(signed):
                    return True
                current = self.relay.fetch_device_list(self.messenger.username)
                if current is None:
                    return False
                signed = self.core(self.messenger.relay_device_list, current).result()
                if signed is None:
                    self._check_still_listed()
        except RelayError as error:
            log.info("device list not published yet (%s)", type(error).__name__)
        return False

    def _published(self, signed: bytes) -> bool:
        """False when the relay holds a list at least as new (Conflict)."""
        try:
            self.relay.publish_device_list(signed)
        except Conflict:
            return False
        return True

    def _removed_by_relay(self) -> None:
        self._emit(
            DeviceUnlinked(
                "This device was signed out: it was removed from your account on another"
                " device, or your account was moved to another computer."
            )
        )

    def _check_still_listed(self) -> None:
        if not self.core(self.messenger.still_listed).result():
            self._emit(DeviceUnlinked("This device was removed from your account."))

    def approve_link(self, device_name: str, identity: PublicIdentity) -> Future[LinkedAccount]:
        """The user approved linking a new device (its name and device identity came
        over the link's encrypted channel): registers it with the relay under a
        sealed name, names it in our device list (sent to every contact and
        published), and returns what the new device is given."""

        def run() -> LinkedAccount:
            account = self.messenger.account_identity
            name = device_name.strip()[:MAX_NAME_CHARACTERS] or "Linked device"
            added = self.relay.add_device(seal_device_name(account, name))
            device_id, token = int(added["device_id"]), str(added["token"])
            try:
                signed = self.core(self.messenger.approve_link, device_id, identity).result()
            except BaseException:
                with contextlib.suppress(RelayError):
                    self.relay.remove_device(device_id)
                raise
            try:
                self.relay.publish_device_list(signed)
            except RelayError as error:
                # Contacts get it in their chats all the same; the next start
                # publishes it for those who fetch it.
                log.info("device list not published yet (%s)", type(error).__name__)
            self.request_flush()
            return LinkedAccount(
                username=self.messenger.username,
                device_id=device_id,
                device_name=name,
                relay_token=token,
                account_identity=account.to_bytes(),
                device_list=signed,
                sync_state=self.core(self.messenger.link_sync_state).result(),
            )

        return self.net(run)

    def _seal_plain_device_name(self) -> bool:
        """A name an older version registered in the clear is replaced by its
        sealed form (app/protocol/device_names.py); True if it was. Tried again at
        the next start when the relay cannot be reached."""
        try:
            listed = self.relay.devices()
            own = next((d for d in listed if d.get("current")), None)
            name = str(own.get("name", "")) if own else ""
            if not name or name.startswith(DEVICE_NAME_PREFIX):
                return False
            self.relay.rename_own_device(
                seal_device_name(self.messenger.account_identity, name[:MAX_NAME_CHARACTERS])
            )
        except (RelayError, ValueError) as error:
            log.info("device name not sealed yet (%s)", type(error).__name__)
            return False
        return True

    def _envelope_arrived(self, envelope: Envelope) -> None:
        with self._inbox_lock:
            if envelope.seq in self._seen_seqs:
                return
            self._seen_seqs[envelope.seq] = None
            while len(self._seen_seqs) > SEEN_SEQS:
                self._seen_seqs.popitem(last=False)
            self._inbox.append(envelope)
            if self._drain_pending:
                return
            self._drain_pending = True
        with contextlib.suppress(RuntimeError):
            self._core.submit(self._drain)

    def _drain(self) -> None:
        """Receives what has queued up, up to a batch, in one transaction.

        Each envelope is its own savepoint (a bad one is quarantined or, if a
        replay, dropped alone, and the rest of the batch is delivered); the batch
        commits once, so a burst costs one fsync rather than one per message, and
        every message still commits together with the ratchet state it used.
        Acknowledgements go out only after the commit."""
        with self._inbox_lock:
            batch = [self._inbox.popleft() for _ in range(min(len(self._inbox), 200))]
        try:
            self._receive_batch(batch)
        except BaseException:
            with self._inbox_lock:
                for envelope in batch:
                    self._seen_seqs.pop(envelope.seq, None)
            raise
        finally:
            # Even after an unexpected failure (the batch then stays unacknowledged
            # on the relay and comes again), later envelopes must not be stuck.
            with self._inbox_lock:
                more = bool(self._inbox)
                self._drain_pending = more
            if more:
                self.core(self._drain)

    def _receive_batch(self, batch: list[Envelope]) -> None:
        results: list[IncomingResult] = []
        done: list[int] = []
        with self.messenger.store.transaction():
            for envelope in batch:
                # Never raises for what an envelope holds (see Messenger.accept): a
                # bad one is quarantined or dropped and still acknowledged, or it
                # would block the mailbox forever. Its error type is logged, never
                # its content.
                if envelope.sealed:
                    result = self.messenger.accept_sealed(envelope.body, envelope.server_time)
                else:
                    result = self.messenger.accept(
                        envelope.sender, envelope.sender_device, envelope.body, envelope.server_time
                    )
                if result.quarantined:
                    self.undecryptable += 1
                    log.info("quarantined an envelope: %s", result.dropped)
                elif result.blocked:
                    pass  # from someone blocked: acknowledged, nothing kept
                elif result.dropped is not None:
                    self.replayed += 1
                    log.info("dropped a replayed envelope: %s", result.dropped)
                results.append(result)
                done.append(envelope.seq)
        for seq in done:
            self._acknowledge(seq)
        for result in results:
            self._after_receive(result)

    def _catch_up(self) -> None:
        """Fetches what waits in the mailbox. Push is the prompt and this the truth:
        an envelope that a stalled or silently dropped push connection never
        delivered still arrives, within a catch-up period."""
        try:
            envelopes = self.relay.fetch()
        except RelayError:
            return
        for envelope in envelopes:
            self._envelope_arrived(envelope)

    def _keys_low(self) -> None:
        self.check_prekeys(refill=True)

    def stop(self) -> None:
        self._stop.set()
        self._history_cancel.set()  # a transfer waiting out an outage stops now
        self._flush_wanted.set()
        if self.push is not None:
            self.push.stop()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self._actions.shutdown(wait=True, cancel_futures=True)
        self._net.shutdown(wait=True, cancel_futures=True)
        self._history.shutdown(wait=True, cancel_futures=True)
        self._core.submit(self.messenger.store.close).result()
        self._core.shutdown(wait=True)
        self.relay.close()

    def _connection_changed(self, connected: bool) -> None:
        self.connected = connected
        self._emit(ConnectionChanged(connected))
        if connected:
            if self._flush_wait_unreachable:
                self._flush_not_before = 0.0
            self.request_flush()
            self.check_prekeys()  # retries an upload that failed while offline

    def _tick(self) -> None:
        expire_every = max(1, int(5 / self._tick_seconds))
        next_key_check = time.monotonic() + KEY_CHECK_SECONDS
        next_catch_up = time.monotonic() + self._fetch_every
        count = 0
        while not self._stop.is_set():
            self._flush_wanted.wait(self._tick_seconds)
            if self._stop.is_set():
                return
            self._flush_wanted.clear()
            try:
                self._flush()
                if time.monotonic() >= next_key_check:
                    next_key_check = time.monotonic() + KEY_CHECK_SECONDS
                    self.check_prekeys()
                if time.monotonic() >= next_catch_up:
                    next_catch_up = time.monotonic() + self._fetch_every
                    self.net(self._catch_up)
            except Closing:
                return  # stop() shut the pools between the check above and here
            count += 1
            if count % expire_every == 0:
                with contextlib.suppress(Exception):
                    self._core.submit(self._expire).result()

    # ---- plumbing -------------------------------------------------------------
    @staticmethod
    def _submit(pool: ThreadPoolExecutor, function: Callable[..., T], *args: Any) -> Future[T]:
        try:
            return pool.submit(function, *args)
        except RuntimeError:
            closed: Future[T] = Future()
            closed.set_exception(Closing("Cipherline is closing"))
            return closed

    def core(self, function: Callable[..., T], *args: Any) -> Future[T]:
        return self._submit(self._core, function, *args)

    def action(self, function: Callable[..., T], *args: Any) -> Future[T]:
        return self._submit(self._actions, function, *args)

    def net(self, function: Callable[..., T], *args: Any) -> Future[T]:
        return self._submit(self._net, function, *args)

    def request_flush(self) -> None:
        self._flush_wanted.set()

    @staticmethod
    def describe_error(error: BaseException) -> str:
        if isinstance(error, ServiceError | StoreError | RelayError):
            return str(error)
        if isinstance(error, ProtocolError):
            return f"The message could not be processed: {error}"
        return f"Something went wrong ({type(error).__name__})."

    def _messages_event(self, conversation_id: int, messages: list[MessageView]) -> None:
        self._emit(MessagesChanged(conversation_id, messages))

    def _conversations_event(self) -> None:
        self._emit(ConversationsChanged(self.messenger.conversations()))

    # ---- network: outbox, keys, attachments -----------------------------------
    def _flush(self) -> None:
        """Sends what is due in the outbox (app/services/delivery.py has the policy).

        Each item's answer is applied on its own: accepted ones leave, refused ones
        fail, and those whose recipient's mailbox is full wait per device in the
        store. A refusal of the whole request (429, 503, unreachable, a revoked
        token) answers nothing about any item: the whole flush waits, in memory
        (a restart may try at once), and every item stays."""
        if not self._flush_lock.acquire(blocking=False):
            return
        try:
            self._prepare_sealed()
            while not self._stop.is_set() and time.monotonic() >= self._flush_not_before:
                items = self.core(self.messenger.outbox_due, 200).result()
                if not items:
                    return
                outcomes: dict[str, SendOutcome] = {}
                failure: RelayError | None = None
                try:
                    self._send_items(items, outcomes)
                except RelayError as error:
                    failure = error
                if outcomes:
                    self.core(self._after_send, items, outcomes).result()
                if failure is not None:
                    self._flush_failed(failure)
                    return
                self._flush_failures = 0
        except RuntimeError:
            return  # shutting down
        finally:
            self._flush_lock.release()

    def _prepare_sealed(self) -> None:
        """Registers this device's delivery token with the relay and renews its sender
        certificate when due. A failure only means sends go authenticated for now
        (docs/threat-model.md); the next flush tries again."""
        sealing = self.messenger.sealing
        try:
            access = self.core(sealing.access_due).result()
            if access is not None:
                self.relay.set_sealed_access(access[0], allow_anyone=access[1])
                self.core(sealing.access_registered, *access).result()
            if self.core(sealing.certificate_due).result():
                certificate, expires = self.relay.sender_certificate()
                self.core(sealing.store_certificate, certificate, expires).result()
        except RelayError as error:
            log.info("sealed sender is not ready (%s); sending authenticated", type(error).__name__)

    def set_sealed_from_anyone(self, on: bool) -> Future[None]:
        """The user's "allow sealed messages from anyone" setting; registered with
        the relay at the next flush."""

        def run() -> None:
            self.messenger.sealing.set_allow_anyone(on)

        future = self.core(run)
        future.add_done_callback(lambda _f: self.request_flush())
        return future

    def _send_items(self, items: list[OutboxItem], outcomes: dict[str, SendOutcome]) -> None:
        """Sends `items`: sealed those it can (`Sealing.seal_items`), the rest, and any
        whose delivery token the relay refused, authenticated."""
        sealed = self.core(self.messenger.sealing.seal_items, items).result()
        if sealed:
            batch = [i for i in items if i.client_id in sealed]
            self._send_batch(batch, outcomes, sealed)
            # Refused sealed (a stale delivery token, or a sealed copy too large):
            # sent again authenticated, now.
            denied = [
                i
                for i in batch
                if outcomes.get(i.client_id) in ("access_denied", delivery.REJECTED)
            ]
            for item in denied:
                if outcomes.pop(item.client_id) == "access_denied":
                    self.core(self.messenger.sealing.forget_peer, item.recipient, item.device_id)
            items = [i for i in items if i.client_id not in sealed] + denied
        if items:
            self._send_batch(items, outcomes, {})

    def _send_batch(
        self,
        items: list[OutboxItem],
        outcomes: dict[str, SendOutcome],
        sealed: dict[str, tuple[bytes, bytes]],
    ) -> None:
        """Sends `items` (sealed when `sealed` holds them), filling in each one's
        outcome; raises the RelayError of a refusal of the whole request, leaving
        the outcomes gathered so far.

        A 4xx for the request (a malformed or oversized item) is bisected down to
        the item that causes it, which alone is `rejected`: one bad item never
        takes the rest of the outbox with it."""
        if sealed:
            batch = [
                OutgoingEnvelope(i.client_id, i.recipient, i.device_id, *sealed[i.client_id])
                for i in items
            ]
        else:
            batch = [OutgoingEnvelope(i.client_id, i.recipient, i.device_id, i.body) for i in items]
        try:
            answers = self.relay.send_sealed(batch) if sealed else self.relay.send(batch)
        except RelayError as error:
            if _whole_request(error):
                raise
            if len(items) == 1:
                log.warning("the relay refused an outbox item (%s)", error.status)
                outcomes[items[0].client_id] = SendOutcome(delivery.REJECTED)
                return
            half = len(items) // 2
            self._send_batch(items[:half], outcomes, sealed)
            self._send_batch(items[half:], outcomes, sealed)
            return
        for item in items:
            # One the answer left out was not stored: like an unknown status, it waits.
            outcomes[item.client_id] = answers.get(item.client_id, SendOutcome(delivery.UNANSWERED))

    def _flush_failed(self, error: RelayError) -> None:
        self._flush_failures += 1
        self.send_backoffs += 1
        retry_after = getattr(error, "retry_after", None)
        delay = delivery.retry_delay(
            self._flush_failures,
            retry_after,
            random.random(),  # noqa: S311 - jitter only
        )
        # Only an unreachable relay is tried again as soon as push reconnects: a
        # relay that answered asked for its wait.
        self._flush_wait_unreachable = isinstance(error, RelayUnavailable) and error.status == 0
        self._flush_not_before = time.monotonic() + delay
        log.info(
            "the relay took none of a send (%s); the outbox waits %.1f s",
            type(error).__name__,
            delay,
        )

    def _after_send(self, items: list[OutboxItem], outcomes: dict[str, SendOutcome]) -> None:
        accepted: list[str] = []
        refused: list[str] = []
        later: dict[str, float | None] = {}
        for item in items:
            outcome = outcomes.get(item.client_id)
            if outcome is None:
                continue  # not answered: its request was refused as a whole
            verdict = delivery.verdict(outcome)
            if verdict is delivery.Verdict.SENT:
                accepted.append(item.client_id)
            elif verdict is delivery.Verdict.FAILED:
                log.info("the relay cannot deliver an outbox item (%s)", outcome)
                refused.append(item.client_id)
            else:
                later[item.client_id] = outcome.retry_after
        with self.messenger.store.transaction():
            changed = (
                self.messenger.sent(accepted)
                + self.messenger.undeliverable(refused)
                + self.messenger.deferred(later)
            )
        by_conversation: dict[int, list[MessageView]] = {}
        for message in changed:
            by_conversation.setdefault(message.conversation_id, []).append(
                self.messenger.message_view(message)
            )
        for conversation_id, views in by_conversation.items():
            self._messages_event(conversation_id, views)

    def check_prekeys(self, *, refill: bool = False, long_lived: bool = False) -> Future[bool]:
        """The prekey check: at start, on every (re)connection, every KEY_CHECK_SECONDS
        and when the relay says the one-time keys run low (`refill`). See
        `Messenger.prekey_upload`; the result is False when the upload failed (the
        next check retries it)."""
        return self.net(self._publish_prekeys, refill, long_lived)

    def _publish_prekeys(self, refill: bool, long_lived: bool) -> bool:
        # Serialised, so that an older upload never lands after a newer one.
        with self._keys_lock:
            try:
                upload = self.core(
                    lambda: self.messenger.prekey_upload(refill=refill, long_lived=long_lived)
                ).result()
                if upload is None:
                    return True
                self.relay.upload_keys(upload.body)
                self.core(self.messenger.prekeys_uploaded, upload).result()
            except RelayError as error:
                log.info("prekey upload failed (%s); the next check retries", type(error).__name__)
                return False
            except (Closing, RuntimeError):
                return False
            return True

    def _ensure_sessions(self, usernames: list[str]) -> None:
        for name in usernames:
            try:
                fetched = self.relay.fetch_keys(name)
            except NotFound:
                raise ServiceError(f"There is no Cipherline user called “{name}”.") from None
            except RelayUnavailable:
                raise ServiceError(
                    f"Cannot reach the relay to start a chat with {name}; try again when online."
                ) from None
            warnings = self.core(self.messenger.install_bundles, name, fetched).result()
            for peer in warnings:
                self._emit(IdentityChanged(peer))

    def _download(self, attachment_id: int) -> None:
        try:
            blob_id, secret, target = self.core(
                self.messenger.attachment_secret, attachment_id
            ).result()
            tmp = target.with_suffix(".part")
            with tmp.open("wb") as out:
                self.relay.download_attachment(blob_id, out)
            # Check the digest before calling it ready; the file stays encrypted.
            with tmp.open("rb") as source, open(os.devnull, "wb") as sink:
                decrypt_attachment(source, sink, secret)
            tmp.replace(target)
            message = self.core(self.messenger.attachment_stored, attachment_id, target).result()
            if message is not None:
                view = self.core(self.messenger.message_view, message).result()
                self._messages_event(message.conversation_id, [view])
        except (RelayError, ProtocolError, ServiceError, OSError) as error:
            log.warning("attachment download failed: %s", type(error).__name__)
            with contextlib.suppress(Exception):
                tmp.unlink(missing_ok=True)
            # Left for a click, which tries again (the bubble says so).
            with contextlib.suppress(Exception):
                failed = self.core(self.messenger.download_failed, attachment_id).result()
                if failed is not None:
                    view = self.core(self.messenger.message_view, failed).result()
                    self._messages_event(failed.conversation_id, [view])

    # ---- receiving ------------------------------------------------------------
    def _after_receive(self, result: IncomingResult) -> None:
        if result.unlinked:
            self._emit(DeviceUnlinked("Another of your devices removed this one from the account."))
        for peer in result.identity_changed:
            self._emit(IdentityChanged(peer))
        by_conversation: dict[int, list[MessageView]] = {}
        for conversation_id, message in result.new_messages:
            view = self.messenger.message_view(message)
            by_conversation.setdefault(conversation_id, []).append(view)
            if not message.outgoing and message.kind not in ("system", "deleted"):
                conversation = self.messenger.store.conversations.get(conversation_id)
                self._emit(
                    IncomingMessage(
                        conversation_id,
                        conversation.title if conversation else message.sender,
                        message.sender,
                        view.body or (view.attachment.filename if view.attachment else ""),
                    )
                )
        for conversation_id, message in result.updated_messages:
            by_conversation.setdefault(conversation_id, []).append(
                self.messenger.message_view(message)
            )
        for conversation_id, views in by_conversation.items():
            self._messages_event(conversation_id, views)
        for conversation_id, sender, started in result.typing:
            self._emit(TypingChanged(conversation_id, sender, started))
        if result.erase:
            # The text a delete or edit replaced leaves the write-ahead log too.
            self.messenger.store.erase_overwritten()
        if result.changed_conversations or result.identity_changed:
            self._conversations_event_soon()
        for attachment_id in result.attachments_to_fetch:
            self.net(self._download, attachment_id)
        if result.history_chunks:
            self._import_history_soon()
        if result.needs_sessions:
            self.action(self._ensure_sessions, sorted(result.needs_sessions))
        self.request_flush()

    def _ack(self, seqs: list[int]) -> None:
        with contextlib.suppress(RelayError):
            self.relay.ack(seqs)

    def _acknowledge(self, seq: int) -> None:
        """Queues an ack (after the message is committed); one request takes all queued."""
        with self._ack_lock:
            self._acks.append(seq)
            if self._ack_pending:
                return
            self._ack_pending = True
        self.net(self._send_acks)

    def _send_acks(self) -> None:
        with self._ack_lock:
            seqs, self._acks = self._acks, []
            self._ack_pending = False
        for start in range(0, len(seqs), 500):
            self._ack(seqs[start : start + 500])

    def _conversations_event_soon(self) -> None:
        """On the core thread: one refresh after the envelopes already queued."""
        if self._conversations_pending:
            return
        self._conversations_pending = True

        def refresh() -> None:
            self._conversations_pending = False
            self._conversations_event()

        self.core(refresh)

    def _expire(self) -> None:
        expired = self.messenger.expire()
        if expired:
            self._conversations_event()
            for conversation_id, message_ids in expired.items():
                self._emit(MessagesExpired(conversation_id, tuple(message_ids)))

    # ---- what the UI asks for -------------------------------------------------
    def conversations(self) -> Future[list[ConversationView]]:
        return self.core(self.messenger.conversations)

    def open_conversation(
        self, conversation_id: int, focus: int = -1
    ) -> Future[tuple[ConversationView, list[MessageView]]]:
        return self.core(self.messenger.open_conversation, conversation_id, focus)

    def older_messages(self, conversation_id: int, before: int) -> Future[list[MessageView]]:
        return self.core(self.messenger.older_messages, conversation_id, before)

    def search(self, query: str) -> Future[list[SearchResultView]]:
        return self.core(self.messenger.search, query)

    def _after_local_send(self, view: MessageView) -> MessageView:
        self._messages_event(view.conversation_id, [view])
        self._conversations_event()
        self.request_flush()
        return view

    def send_text(
        self, conversation_id: int, text: str, reply_to: int | None = None
    ) -> Future[MessageView]:
        def run() -> MessageView:
            missing = self.core(self.messenger.missing_sessions, conversation_id).result()
            if missing:
                with contextlib.suppress(ServiceError):
                    self._ensure_sessions(missing)
            return self.core(
                lambda: self._after_local_send(
                    self.messenger.send_text(conversation_id, text, reply_to)
                )
            ).result()

        return self.action(run)

    def react(self, message_id: int, emoji: str) -> Future[MessageView]:
        """Reacts (or, with the same emoji again, takes the reaction back)."""

        def react() -> MessageView:
            view = self.messenger.react(message_id, emoji)
            self._messages_event(view.conversation_id, [view])
            self.request_flush()
            return view

        def run() -> MessageView:
            # As for a text: a group member we have no session with yet would get
            # no copy at all, so sessions are made first.
            message = self.core(self.messenger.store.messages.get, message_id).result()
            if message is not None:
                missing = self.core(
                    self.messenger.missing_sessions, message.conversation_id
                ).result()
                if missing:
                    with contextlib.suppress(ServiceError):
                        self._ensure_sessions(missing)
            return self.core(react).result()

        return self.action(run)

    def send_file(
        self,
        conversation_id: int,
        path: Path,
        *,
        caption: str = "",
        thumbnail: Thumbnail | None = None,
        data: bytes | None = None,
    ) -> Future[MessageView]:
        """Sends the file at `path`, or `data` under `path`'s name (a pasted image,
        which has no file), with its caption and thumbnail (docs/protocol.md §5)."""

        def run() -> MessageView:
            missing = self.core(self.messenger.missing_sessions, conversation_id).result()
            if missing:
                self._ensure_sessions(missing)
            # Refused before anything is uploaded (IdentityNotAccepted), not after.
            self.core(self.messenger.require_sendable, conversation_id).result()
            if data is not None:
                encrypted = self.core(self.messenger.encrypt_attachment_data, data)
            else:
                encrypted = self.core(self.messenger.encrypt_attachment_file, path)
            local, secret = encrypted.result()
            try:
                with local.open("rb") as source:
                    blob_id = self.relay.upload_attachment(source)
            except RelayError as error:
                local.unlink(missing_ok=True)
                raise ServiceError(f"The file was not sent: {error}") from None
            return self.core(
                lambda: self._after_local_send(
                    self.messenger.send_attachment(
                        conversation_id,
                        path,
                        blob_id,
                        secret,
                        local.name,
                        caption=caption,
                        thumbnail=thumbnail,
                    )
                )
            ).result()

        return self.action(run)

    def download_attachment(self, attachment_id: int) -> Future[bool]:
        """Fetches an attachment left for a click (messenger.AUTO_DOWNLOAD_BYTES);
        its bubble repaints when it is ready. False if there was nothing to fetch."""

        def run() -> bool:
            if not self.messenger.request_download(attachment_id):
                return False
            self.net(self._download, attachment_id)
            return True

        return self.core(run)

    def read_attachment(self, attachment_id: int) -> Future[bytes]:
        return self.core(self.messenger.read_attachment, attachment_id)

    def save_attachment(self, attachment_id: int, target: Path) -> Future[None]:
        return self.core(self.messenger.save_attachment, attachment_id, target)

    # ---- delete, edit, typing (issue #24) ---------------------------------------
    def delete_for_me(self, message_id: int) -> Future[None]:
        def run() -> None:
            conversation_id = self.messenger.delete_for_me(message_id)
            self._emit(MessagesExpired(conversation_id, (message_id,)))
            self._conversations_event()

        return self.core(run)

    def delete_for_everyone(self, message_id: int) -> Future[MessageView]:
        return self.core(
            lambda: self._after_local_send(self.messenger.delete_for_everyone(message_id))
        )

    def edit_text(self, message_id: int, text: str) -> Future[MessageView]:
        return self.core(lambda: self._after_local_send(self.messenger.edit_text(message_id, text)))

    def send_typing(self, conversation_id: int, started: bool) -> Future[int]:
        """Sends a typing indicator straight to the relay, never through the outbox:
        one that fails is dropped, as it would be stale by any retry. The result
        is how many envelopes the relay took."""

        def taken(answers: dict[str, SendOutcome]) -> int:
            return sum(1 for a in answers.values() if delivery.verdict(a) is delivery.Verdict.SENT)

        def send(envelopes: list[tuple[str, int, bytes]]) -> int:
            batch = [
                OutgoingEnvelope(uuid.uuid4().hex, recipient, device_id, body)
                for recipient, device_id, body in envelopes
            ]
            # Sealed wherever a message would be: an indicator says who writes to
            # whom, and when, as plainly as a message does.
            sealed = self.core(self.messenger.sealing.seal_items, batch).result()
            plain = [e for e in batch if e.client_id not in sealed]
            count = 0
            if sealed:
                copies = [
                    OutgoingEnvelope(e.client_id, e.recipient, e.device_id, *sealed[e.client_id])
                    for e in batch
                    if e.client_id in sealed
                ]
                try:
                    answers = self.relay.send_sealed(copies)
                except RelayError:
                    answers = {}  # dropped like any indicator that fails: stale by a retry
                count += taken(answers)
                for envelope in batch:
                    if answers.get(envelope.client_id) == "access_denied":
                        # A stale token, forgotten as the outbox forgets it; this
                        # copy goes authenticated while it is still current.
                        self.core(
                            self.messenger.sealing.forget_peer,
                            envelope.recipient,
                            envelope.device_id,
                        ).result()
                        plain.append(envelope)
            if plain:
                with contextlib.suppress(RelayError):
                    count += taken(self.relay.send(plain))
            return count

        def run() -> int:
            envelopes = self.core(self.messenger.typing_envelopes, conversation_id, started)
            found = envelopes.result()
            return send(found) if found else 0

        return self.net(run)

    def typing_indicators(self) -> Future[bool]:
        return self.core(lambda: self.messenger.typing_indicators)

    def set_typing_indicators(self, on: bool) -> Future[None]:
        return self.core(self.messenger.set_typing_indicators, on)

    def retry(self, message_id: int) -> Future[MessageView]:
        return self.core(lambda: self._after_local_send(self.messenger.retry(message_id)))

    def mark_read(self, conversation_id: int) -> Future[None]:
        def run() -> None:
            self.messenger.mark_read(conversation_id)
            self._conversations_event()
            self.request_flush()

        return self.core(run)

    def start_direct(self, username: str) -> Future[ConversationView]:
        def run() -> ConversationView:
            name = username.strip().lower()
            if name == self.messenger.username:
                raise ServiceError("You cannot start a chat with yourself.")
            self._ensure_sessions([name])
            with contextlib.suppress(RelayError):
                self._own_sessions()  # they become a contact on our other devices too
            view = self.core(self.messenger.direct_conversation, name).result()
            self.core(self._conversations_event).result()
            return view

        return self.action(run)

    def create_group(self, title: str, members: list[str]) -> Future[ConversationView]:
        def run() -> ConversationView:
            names = sorted(
                {m.strip().lower() for m in members if m.strip()} - {self.messenger.username}
            )
            # Our own other devices too: they get the group as this one has it.
            own = self.messenger.username
            missing = [
                n for n in [*names, own] if self.core(self.messenger.lacks_sessions, n).result()
            ]
            self._ensure_sessions(missing)
            view = self.core(self.messenger.create_group, title, names).result()
            self.core(self._conversations_event).result()
            self.request_flush()
            return view

        return self.action(run)

    def add_member(self, conversation_id: int, username: str) -> Future[ConversationView]:
        def run() -> ConversationView:
            name = username.strip().lower()
            own = self.messenger.username
            missing = [
                n for n in (name, own) if self.core(self.messenger.lacks_sessions, n).result()
            ]
            self._ensure_sessions(missing)
            view = self.core(self.messenger.change_members, conversation_id, [name], []).result()
            self.core(self._conversations_event).result()
            self.request_flush()
            return view

        return self.action(run)

    def remove_member(self, conversation_id: int, username: str) -> Future[ConversationView]:
        def run() -> ConversationView:
            view = self.core(
                self.messenger.change_members, conversation_id, [], [username.strip().lower()]
            ).result()
            self.core(self._conversations_event).result()
            self.request_flush()
            return view

        return self.action(run)

    def safety_number(self, peer: str) -> Future[SafetyNumberView]:
        return self.core(self.messenger.safety_number, peer)

    def set_verified(self, peer: str, verified: bool) -> Future[None]:
        def run() -> None:
            self.messenger.set_verified(peer, verified)
            self._conversations_event()
            self.request_flush()  # verifying accepts a changed identity: held sends go

        return self._synced(run)

    def _synced(self, change: Callable[[], T]) -> Future[T]:
        """`change` (which syncs itself to our other devices) on the core thread,
        once there are sessions with those devices to carry the sync; offline, it
        is made here alone."""

        def run() -> T:
            with contextlib.suppress(RelayError):
                self._own_sessions()
            return self.core(change).result()

        return self.action(run)

    def accept_identity(self, peer: str, *, verified: bool = False) -> Future[int]:
        """The "Accept new safety number" action: unblocks sending to `peer` and
        sends what was held for it; the result is how many held sends were queued."""

        def run() -> int:
            released = self.messenger.accept_identity(peer, verified=verified)
            self._conversations_event()
            self.request_flush()
            return released

        return self.core(run)

    # ---- contacts, message requests, blocking (all local) ----------------------
    def contacts(self) -> Future[list[str]]:
        return self.core(self.messenger.contacts)

    def blocked_contacts(self) -> Future[list[str]]:
        return self.core(self.messenger.blocked_contacts)

    def _after_request_change(self) -> None:
        self._conversations_event()
        self.request_flush()

    def accept_request(self, conversation_id: int) -> Future[ConversationView]:
        def run() -> ConversationView:
            view = self.messenger.accept_request(conversation_id)
            self._after_request_change()  # the read receipts held back go now
            return view

        return self._synced(run)

    def block_request(self, conversation_id: int) -> Future[None]:
        def run() -> None:
            self.messenger.block_request(conversation_id)
            self._after_request_change()

        return self._synced(run)

    def set_blocked(self, username: str, blocked: bool) -> Future[None]:
        def run() -> None:
            self.messenger.set_blocked(username, blocked)
            self._after_request_change()

        return self._synced(run)

    def delete_conversation(self, conversation_id: int) -> Future[None]:
        def run() -> None:
            self.messenger.delete_conversation(conversation_id)
            self._after_request_change()  # a group left: the departure goes out

        return self.core(run)

    def acknowledge_identity(self, peer: str) -> Future[None]:
        def run() -> None:
            self.messenger.acknowledge_identity(peer)
            self._conversations_event()

        return self.core(run)

    def set_timer(self, conversation_id: int, seconds: int) -> Future[None]:
        def run() -> None:
            self.messenger.set_timer(conversation_id, seconds)
            _view, messages = self.messenger.open_conversation(conversation_id)
            self._messages_event(conversation_id, messages[-1:])
            self._conversations_event()
            self.request_flush()

        return self.core(run)

    def devices(self) -> Future[list[dict[str, Any]]]:
        """The account's devices, each name opened (app/protocol/device_names.py);
        `name` is None for one this device cannot read (another identity's)."""
        identity = self.messenger.account_identity

        def run() -> list[dict[str, Any]]:
            listed = self.relay.devices()
            for device in listed:
                device["name"] = open_device_name(identity, str(device.get("name", "")))
            return listed

        return self.net(run)

    def remove_device(self, device_id: int) -> Future[None]:
        """Unlinks another of our devices: a device list without it goes to every
        contact (they stop encrypting to it at their next message) and to the
        relay, which then signs it out and tells it why."""

        def run() -> None:
            listed = self.core(self.messenger.listed_devices).result()
            if device_id in listed:
                signed = self.core(self.messenger.unlink_device, device_id).result()
                self.request_flush()
                self.relay.publish_device_list(signed)
            elif device_id == self.messenger.device_id:
                raise ServiceError("This device cannot remove itself here.")
            self.relay.remove_device(device_id)

        return self.net(run)

    def lock_available(self) -> bool:
        return Store.key_method(self.messenger.profile) == "passphrase"

    def check_passphrase(self, passphrase: str) -> Future[bool]:
        def run() -> bool:
            try:
                Store.verify_protector(self.messenger.profile, PassphraseProtector(passphrase))
            except WrongPassphrase:
                return False
            return True

        return self.net(run)

    def emit_error(self, text: str) -> None:
        self._emit(ServiceErrorEvent(text))

    # ---- history transfer (issue #19; docs/protocol.md §14) --------------------
    def transfer_history(
        self,
        to_device_id: int,
        *,
        progress: Callable[[int, int], None] | None = None,
        chunk_messages: int = history.CHUNK_MESSAGES,
    ) -> Future[int]:
        """Sends this device's history to our device `to_device_id` (just linked):
        chunk by chunk through the relay's attachment path, each announced over
        our pairwise session with it. Survives a dropped connection or a relay
        restart (each upload is retried with backoff) and an app restart (the
        next start resumes after the last chunk announced); calling it again for
        the same device resumes, or returns at once when it is done.

        `progress(done, total)` (messages) is called on a worker thread after each
        chunk; `HistoryProgress(sending=True)` events say the same. The result is
        how many messages were sent; HistoryTransferCancelled after
        `cancel_history_transfer` or `stop`, ServiceError when the relay refuses
        the chunks for good."""
        self._history_cancel.clear()
        return self._submit(
            self._history, self._send_history, to_device_id, chunk_messages, progress
        )

    def cancel_history_transfer(self) -> None:
        """Stops an outgoing transfer after its current step; calling
        `transfer_history` again for the same device resumes it."""
        self._history_cancel.set()

    def history_progress(self, *, sending: bool = False) -> Future[HistoryProgress | None]:
        """Where the newest transfer stands: to this device, or (`sending`) from it."""

        def run() -> HistoryProgress | None:
            store = self.messenger.store
            if sending:
                transfer = history.load_outgoing(store)
                if transfer is None:
                    return None
                # Cancelled by the user, or its device unlinked: not running.
                stopped = not transfer.finished and (
                    transfer.cancelled or transfer.device_id not in self.messenger.listed_devices()
                )
                return HistoryProgress(
                    transfer.done, transfer.total, transfer.finished, True, stopped=stopped
                )
            found = history.incoming_progress(store)
            return None if found is None else HistoryProgress(*found)

        return self.core(run)

    def _history_wait(self, failures: int, stop: threading.Event, hint: float | None) -> None:
        delay = hint if hint is not None else min(10.0, 0.25 * 2 ** min(failures, 6))
        delay *= 0.75 + random.random() / 2  # noqa: S311 - jitter only
        if stop.wait(delay) or self._stop.is_set():
            raise HistoryTransferCancelled("The history transfer was stopped.")

    def _resume_history_transfer(self) -> None:
        transfer = self.core(history.load_outgoing, self.messenger.store).result()
        if transfer is None or transfer.finished or transfer.cancelled:
            return
        if transfer.device_id not in self.core(self.messenger.listed_devices).result():
            return  # unlinked meanwhile: nothing to resume
        try:
            self._send_history(transfer.device_id, history.CHUNK_MESSAGES, None)
        except ServiceError as error:
            log.info("history transfer not resumed (%s)", type(error).__name__)

    def _send_history(
        self,
        device_id: int,
        chunk_messages: int,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        try:
            return self._send_history_chunks(device_id, chunk_messages, progress)
        except HistoryTransferCancelled:
            if not self._stop.is_set():
                # The user's cancel: the next start does not resume it unasked.
                self.core(history.cancel_outgoing, self.messenger.store).result()
            raise

    def _send_history_chunks(
        self,
        device_id: int,
        chunk_messages: int,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        store = self.messenger.store
        with self._history_out_lock:
            transfer = self.core(history.begin_transfer, store, device_id).result()
            self._history_sent(transfer, progress)
            while not transfer.finished:
                if self._history_cancel.is_set() or self._stop.is_set():
                    raise HistoryTransferCancelled("The history transfer was stopped.")
                if not self.core(self.messenger.reaches_own_device, device_id).result():
                    self._history_session(device_id)
                    continue
                chunk = self.core(
                    lambda t=transfer: history.export_chunk(
                        store, t.after_id, t.until_id, limit=chunk_messages
                    )
                ).result()
                sealed = history.seal_chunk(chunk.records)
                blob_id = self._history_upload(sealed.blob)
                announcement = HistoryChunk(
                    transfer_id=transfer.transfer_id,
                    index=transfer.next_index,
                    last=not chunk.more,
                    messages=len(chunk.records),
                    # A row id freed by a deletion can be reused below `until_id`.
                    total=max(transfer.total, len(chunk.records)),
                    blob_id=blob_id,
                    key=sealed.secret.key,
                    digest=sealed.secret.digest,
                    size=sealed.secret.size,
                )
                advanced = transfer.advanced(chunk)
                if not self.core(
                    self.messenger.announce_history_chunk, device_id, announcement, advanced
                ).result():
                    continue  # the session went (an unlink?): made again, or cancelled
                transfer = advanced
                self.request_flush()
                self._history_sent(transfer, progress)
            return transfer.done

    def _history_sent(
        self, transfer: history.OutgoingTransfer, progress: Callable[[int, int], None] | None
    ) -> None:
        if progress is not None:
            try:
                progress(transfer.done, transfer.total)
            except Exception:
                log.exception("history progress callback failed")
        self._emit(HistoryProgress(transfer.done, transfer.total, transfer.finished, True))

    def _history_session(self, device_id: int) -> None:
        """Waits for a session with the new device: its keys reach the relay only
        once it has made its profile from the provision."""
        failures = 0
        while not self.core(self.messenger.reaches_own_device, device_id).result():
            if device_id not in self.core(self.messenger.listed_devices).result():
                raise ServiceError("That device is no longer linked to your account.")
            try:
                self._ensure_sessions([self.messenger.username])
            except (ServiceError, RelayError) as error:
                log.info("no session with the new device yet (%s)", type(error).__name__)
            if self.core(self.messenger.reaches_own_device, device_id).result():
                return
            failures += 1
            self._history_wait(failures, self._history_cancel, None)

    def _history_upload(self, blob: bytes) -> str:
        failures = 0
        while True:
            if self._history_cancel.is_set() or self._stop.is_set():
                raise HistoryTransferCancelled("The history transfer was stopped.")
            try:
                return self.relay.upload_attachment(io.BytesIO(blob))
            except RelayError as error:
                if not _whole_request(error):
                    raise ServiceError(f"The relay refused the history: {error}") from None
                failures += 1
                hint = error.retry_after if isinstance(error, RateLimited) else None
                log.info("history upload failed (%s); retrying", type(error).__name__)
                self._history_wait(failures, self._history_cancel, hint)
            except OSError as error:  # the connection dropped mid-upload
                failures += 1
                log.info("history upload failed (%s); retrying", type(error).__name__)
                self._history_wait(failures, self._history_cancel, None)

    def _import_history_soon(self) -> None:
        with self._history_lock:
            self._history_wanted = True
            if self._history_running:
                return
            self._history_running = True
        self._submit(self._history, self._import_history)

    def _import_history(self) -> None:
        """Fetches and imports every announced chunk, until none is left; woken again
        by each new announcement while it runs."""
        try:
            while True:
                with self._history_lock:
                    if not self._history_wanted or self._stop.is_set():
                        self._history_running = False
                        return
                    self._history_wanted = False
                self._import_pending()
        except BaseException:
            with self._history_lock:
                self._history_running = False
            if not self._stop.is_set():
                log.exception("history import stopped")
            raise

    def _import_pending(self) -> None:
        store = self.messenger.store
        failures = 0
        while not self._stop.is_set():
            rows = self.core(store.history.pending).result()
            if not rows:
                return
            for row in rows:
                try:
                    records = self._fetch_chunk(row)
                except RelayError as error:
                    if _whole_request(error):
                        failures += 1
                        self._history_wait(failures, self._stop, None)
                        break  # the relay is back: start again from the list
                    log.warning("a history chunk is gone from the relay (%s)", error.status)
                    self.core(history.fail_chunk, store, row).result()
                except OSError as error:
                    failures += 1
                    log.info("history download failed (%s); retrying", type(error).__name__)
                    self._history_wait(failures, self._stop, None)
                    break
                except ProtocolError as error:
                    log.warning("a history chunk was refused (%s)", type(error).__name__)
                    self.core(history.fail_chunk, store, row).result()
                else:
                    failures = 0
                    self.core(
                        lambda r=row, found=records: history.import_chunk(
                            store, r, found, own_username=self.messenger.username
                        )
                    ).result()
                    self.core(self._conversations_event_soon)
                done, total, finished = self.core(store.history.progress, row.transfer_id).result()
                self._emit(HistoryProgress(done, total, finished))

    def _fetch_chunk(self, row: HistoryChunkRow) -> list[history.HistoryRecord]:
        assert row.key is not None
        assert row.digest is not None
        target = history.BoundedBuffer(history.sealed_size_bound(row.size))
        self.relay.download_attachment(row.blob_id, target)
        return history.open_chunk(
            target.getvalue(), AttachmentSecret(row.key, row.digest, row.size)
        )
