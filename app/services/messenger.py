"""The messenger core: store + protocol, no network and no threads.

Every method runs on the client's single core thread. Whatever a method changes
(ratchet state, prekeys, messages, outbox) it changes in one store transaction, so
a crash leaves either all of it or none of it.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import mimetypes
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.crypto import sha256
from app.protocol import AuthenticationError, NoSession, ProtocolError, ReplayError
from app.protocol import group_state as gs
from app.protocol.attachments import AttachmentSecret, decrypt_attachment, encrypt_attachment
from app.protocol.content import (
    CHANGE_WINDOW_MS,
    FRAME_GROUP,
    FRAME_PAIRWISE,
    MAX_QUOTE_SNIPPET,
    RECEIPT_DELIVERED,
    RECEIPT_READ,
    AcceptedSync,
    AttachmentPointer,
    BlockedSync,
    Content,
    Delete,
    DeviceListUpdate,
    Edit,
    GroupChangeContent,
    GroupUpdate,
    HistoryChunk,
    ProfileKey,
    Quote,
    Reaction,
    ReadSync,
    Receipt,
    RestoreNotice,
    SenderKey,
    SentTranscript,
    Text,
    TimerUpdate,
    Typing,
    VerifiedSync,
    decode_content,
    decode_frame,
    encode_content,
    encode_frame,
)
from app.protocol.device_list import (
    DeviceListError,
    StaleDeviceList,
    UnlistedDevice,
    declared,
)
from app.protocol.identity import (
    DeviceIdentity,
    LocalPrekeys,
    PrekeyUpload,
    PublicIdentity,
    RemoteBundle,
)
from app.protocol.safety import qr_payload, safety_number
from app.protocol.sender_keys import SenderKeyDistribution, SenderKeyState, group_message_chain
from app.protocol.session import Session, SessionStart
from app.services import delivery
from app.services.devices import DeviceLists, ListChange
from app.services.history import OutgoingTransfer, record_announcement, save_outgoing
from app.services.link_state import export_sync_state
from app.services.sealing import Sealing, pinned_keys
from app.services.views import (
    DELETED_TEXT,
    AttachmentView,
    ConversationKind,
    ConversationView,
    MessageStatus,
    MessageView,
    QuoteView,
    SafetyNumberView,
    SearchResultView,
    Thumbnail,
    unaccepted_sentence,
)
from app.store import Attachment, Conversation, Message, OutboxItem, Store
from app.store.database import HistoryChunkRow
from app.store.receiving import is_device_failure

log = logging.getLogger("cipherline.messenger")
HANDLED_CONTENT_LABEL = b"Cipherline_HandledContent_v1"
# The reactions the picker offers (as Signal Desktop's default set); any single
# emoji that arrives is shown.
# Incoming files up to this size are fetched as they arrive (the thumbnail shows
# meanwhile); larger ones wait for a click, as Signal's auto-download limits do,
# so a stranger's 2 GiB file does not fill the disk or the data plan unasked.
AUTO_DOWNLOAD_BYTES = 8 * 1024 * 1024
REACTION_CHOICES = ("👍", "❤️", "😂", "😮", "😢", "🙏")
# A typing indicator that waited this long (the recipient was offline) is old news.
TYPING_STALE_MS = 20_000
TYPING_SETTING = "typing_indicators"
# When the blocked list last changed here, or was last taken from another of our
# devices (docs/protocol.md §13, "Own devices").
BLOCKED_CHANGED_SETTING = "sync.blocked_changed_at"


class ServiceError(Exception):
    """Something the user asked for cannot be done; the message says why."""


class IdentityNotAccepted(ServiceError):
    """A send refused: `members` changed identity after they were verified, and the
    new safety numbers are not yet accepted (app/store/trust.py, `UNACCEPTED`).
    Nothing was encrypted and nothing was stored; the text is a sentence."""

    def __init__(self, members: list[str], *, group: bool) -> None:
        super().__init__(unaccepted_sentence(members, group=group))
        self.members = tuple(members)
        self.group = group


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class IncomingResult:
    """What processing one envelope produced, for the UI and the network layer."""

    changed_conversations: set[int] = field(default_factory=set)
    new_messages: list[tuple[int, Message]] = field(default_factory=list)
    # Messages already shown that changed (a reaction): repainted, never notified.
    updated_messages: list[tuple[int, Message]] = field(default_factory=list)
    identity_changed: list[str] = field(default_factory=list)
    # Our account's newest list no longer names this device: it was unlinked from
    # another of our devices, and locks itself.
    unlinked: bool = False
    attachments_to_fetch: list[int] = field(default_factory=list)
    needs_sessions: set[str] = field(default_factory=set)
    # Set when the envelope was not delivered: the error's type name (never its text).
    dropped: str | None = None
    # True when it was kept in the quarantine and shown as "could not be decrypted";
    # False with `dropped` set means a replay, dropped without a trace in any chat.
    quarantined: bool = False
    # True when the sender is blocked and what it carried was dropped unseen.
    blocked: bool = False
    # (conversation id, who, started): typing indicators, shown and never stored.
    typing: list[tuple[int, str, bool]] = field(default_factory=list)
    # A delete or edit overwrote text: the caller erases the old pages from the
    # write-ahead log (Store.erase_overwritten) once the transaction committed.
    erase: bool = False
    # Another of our devices announced a chunk of history (content type 20): the
    # client fetches and imports it in the background.
    history_chunks: bool = False


class Messenger:
    def __init__(self, store: Store, profile: Path, clock: Callable[[], int] = now_ms) -> None:
        account = store.account.get()
        if account is None:
            raise ServiceError("this profile has no account yet")
        self.store = store
        self.profile = profile
        self.clock = clock
        self.username = account.username
        self.device_id = account.device_id
        self.device_name = account.device_name
        self.relay_token = account.relay_token
        self.identity = DeviceIdentity.from_bytes(account.identity)
        self.attachments_dir = profile / "attachments"
        self.attachments_dir.mkdir(exist_ok=True, mode=0o700)
        self.sealing = Sealing(store, self.identity, pinned_keys(profile), clock)
        self.devices = DeviceLists(store, self.username, self.device_id, self.identity, clock)

    @property
    def account_identity(self) -> DeviceIdentity:
        """What safety numbers and group changes use: one identity for the account
        (docs/protocol.md §13); `identity` is this device's own, for its sessions."""
        return self.devices.account_identity

    # ---- account --------------------------------------------------------------
    @staticmethod
    def prepare_account() -> tuple[DeviceIdentity, LocalPrekeys]:
        return DeviceIdentity.generate(), LocalPrekeys.generate(now=now_ms())

    def prekeys(self) -> LocalPrekeys:
        account = self.store.account.get()
        assert account is not None
        return LocalPrekeys.from_bytes(account.prekeys)

    def prekey_upload(
        self, *, refill: bool = False, long_lived: bool = False
    ) -> PrekeyUpload | None:
        """The prekey check (docs/protocol.md §1, "Prekey lifetimes"), on the core
        thread: rotates the signed and last-resort prekeys when due, deletes retired
        ones past their grace period together with their replay memory, adds a batch
        of one-time keys when `refill`, and commits all that before anything goes to
        the relay (a failed upload is simply retried by the next check). Returns
        what the relay lacks — with `long_lived`, the current signed and last-resort
        prekeys in any case — or None. Idempotent: a second call changes nothing."""
        now = self.clock()
        with self.store.transaction():
            prekeys = self.prekeys()
            stored = prekeys.to_bytes()
            prekeys.rotate_if_due(now)
            deleted = prekeys.expire(now)
            if refill:
                prekeys.refill()
            if prekeys.to_bytes() != stored:
                self.store.account.set_prekeys(prekeys.to_bytes())
            if deleted:
                self.store.session_starts.prune(
                    prekeys.held_signed_prekey_ids(), prekeys.held_last_resort_ids()
                )
        if deleted or long_lived or self.store.erase_pending:
            # The deleted private keys must not survive in the write-ahead log.
            self.store.erase_overwritten()
        return prekeys.pending_upload(self.identity, long_lived=long_lived)

    def prekeys_uploaded(self, upload: PrekeyUpload) -> None:
        """The relay accepted `upload`: its keys are published (and a new signed
        prekey's predecessors start their grace period now)."""
        with self.store.transaction():
            prekeys = self.prekeys()
            prekeys.mark_uploaded(upload, self.clock())
            self.store.account.set_prekeys(prekeys.to_bytes())

    # ---- our devices ----------------------------------------------------------
    def own_device_list(self) -> bytes:
        """Our signed device list, to publish. Made the first time (an account from
        before lists: this device alone, its identity the account's, so no safety
        number changes) and then sent to every contact we have a session with, who
        would otherwise learn it only with a new session."""
        with self.store.transaction():
            first = self.store.device_lists.get(self.username) is None
            signed = self.devices.own().signed
            if first:
                self._announce_device_list(signed)
            return signed

    def relay_device_list(self, signed: bytes) -> bytes | None:
        """The relay refused our list as not newer than its own, `signed`. Taken when
        it is ours and newer (another of our devices changed it); when it is an
        earlier installation's (another account identity: this device was set up
        afresh), ours is signed again past its version. Returns the list to
        publish now, or None."""
        with self.store.transaction():
            own = self.devices.own()
            try:
                version, theirs = declared(signed)
            except DeviceListError:
                return None
            if theirs.to_bytes() == own.account.to_bytes():
                self.devices.adopt_own(signed)
                return None
            return self.devices.sign_own(list(own.devices), at_least=version + 1).signed

    def approve_link(self, device_id: int, identity: PublicIdentity) -> bytes:
        """The user approved linking a new device (registered with the relay as
        `device_id`, its device identity `identity`): our list names it from now
        on. Every contact and our other devices are sent the new list, and our
        group chains start afresh. Returns the list to publish and to hand to the
        new device."""
        with self.store.transaction():
            own = self.devices.own()
            if own.identity_of(device_id) is not None:
                raise ServiceError("that device is already linked to this account")
            listed = self.devices.sign_own([*own.devices, (device_id, identity)])
            self._device_list_notices(self.username, ListChange(added=[device_id]))
            self._announce_device_list(listed.signed)
            return listed.signed

    def unlink_device(self, device_id: int) -> bytes:
        """Removes another of our devices from the account's list: contacts stop
        encrypting to it at their next message (the new list goes to all of them),
        our group chains start afresh, and its sessions are dropped. Returns the
        list to publish."""
        if device_id == self.device_id:
            raise ServiceError("This device cannot remove itself here.")
        with self.store.transaction():
            own = self.devices.own()
            if own.identity_of(device_id) is None:
                raise ServiceError("that device is not linked to this account")
            listed = self.devices.sign_own([d for d in own.devices if d[0] != device_id])
            self.store.sessions.delete(self.username, device_id)
            self.store.sessions.delete_archived(self.username, device_id)
            self._device_list_notices(self.username, ListChange(removed=[device_id]))
            self._announce_device_list(listed.signed)
            return listed.signed

    def listed_devices(self) -> list[int]:
        """Our account's devices as our newest list names them, this one included."""
        with self.store.transaction():
            return self.devices.own().device_ids()

    def still_listed(self) -> bool:
        """False once our newest list no longer names this device (unlinked)."""
        return self.device_id in self.listed_devices()

    def owed_restore_notices(self) -> list[str]:
        """Contacts this restored profile has not told yet (docs/protocol.md,
        "Restore"), blocked ones left out."""
        with self.store.transaction():
            return [
                name
                for name in self.store.sessions.owed_restore_notices()
                if not self.store.contacts.is_blocked(name)
            ]

    def send_owed_restore_notices(self) -> None:
        """Tells every contact with a fresh session at once (it also carries this
        device's list first), rather than at the next message to each."""
        with self.store.transaction():
            for name in self.store.sessions.owed_restore_notices():
                if self._sending_devices(name) and not self.store.contacts.is_blocked(name):
                    self._send_restore_notice(name)

    def take_own_list(self, signed: bytes) -> IncomingResult:
        """Our list as the relay now serves it (another of our devices published it:
        the relay's push said so)."""
        result = IncomingResult()
        with self.store.transaction():
            self._take_device_list(self.username, DeviceListUpdate(signed), result)
        return result

    def link_sync_state(self) -> bytes:
        """The contacts, device lists and groups a device being linked is given."""
        with self.store.transaction():
            return export_sync_state(self.store)

    def _announce_device_list(self, signed: bytes) -> None:
        """Our new list to every device we have a session with that may read it: each
        contact's listed devices and our own other ones."""
        update = encode_content(DeviceListUpdate(signed))
        for username in sorted({name for name, _device, _state in self.store.sessions.all()}):
            for device_id in self._sending_devices(username):
                self._encrypt_to_device(username, device_id, update, None)

    # ---- views ----------------------------------------------------------------
    def conversation_view(self, conversation: Conversation) -> ConversationView:
        last = self.store.messages.last(conversation.id)
        contact = self.store.contacts.get(conversation.peer) if conversation.peer else None
        members: tuple[str, ...] = ()
        if conversation.group_id is not None:
            members = tuple(self.store.groups.members(conversation.group_id))
        preview = ""
        if last is not None:
            preview = last.body if last.kind != "attachment" else f"Attachment: {last.body}"
            if last.kind == "deleted":
                preview = DELETED_TEXT
            if conversation.kind == "group" and not last.outgoing and last.kind != "system":
                preview = f"{last.sender}: {preview}"
        return ConversationView(
            conversation_id=conversation.id,
            kind=ConversationKind(conversation.kind),
            title=conversation.title,
            last_text=preview,
            last_time_ms=last.sent_at if last else conversation.last_activity,
            unread=conversation.unread,
            timer_seconds=conversation.timer_seconds,
            peer=conversation.peer,
            identity_changed=bool(contact and contact.identity_changed),
            verified=bool(contact and contact.verified),
            members=members,
            unaccepted=tuple(self._unaccepted_in(conversation)),
            request=self._is_request(conversation),
            blocked=bool(contact and contact.blocked),
        )

    # ---- contacts, message requests, blocking ---------------------------------
    # docs/protocol.md, "Message requests and blocking". All local: the relay is
    # never told whom the user accepted or blocked.
    def _is_request(self, conversation: Conversation) -> bool:
        if conversation.peer is None:
            return conversation.request
        contact = self.store.contacts.get(conversation.peer)
        return contact is None or not contact.accepted

    def shares_presence(self, conversation_id: int) -> bool:
        """Whether read receipts (and typing) may go to this chat: not while it is a
        request, nor to a blocked peer. Delivery receipts are sent regardless."""
        conversation = self._conversation(conversation_id)
        if self._is_request(conversation):
            return False
        return conversation.peer is None or not self.store.contacts.is_blocked(conversation.peer)

    def contacts(self) -> list[str]:
        """The contacts' usernames, for the new-chat and new-group pickers."""
        return [c.username for c in self.store.contacts.accepted() if c.username != self.username]

    def blocked_contacts(self) -> list[str]:
        return self.store.contacts.blocked()

    def accept_request(self, conversation_id: int) -> ConversationView:
        """The request bar's "Accept": the peer becomes a contact (a group stops
        being a request), and read receipts for what was read meanwhile go out."""
        conversation = self._conversation(conversation_id)
        with self.store.transaction():
            if conversation.peer is not None:
                self.store.contacts.accept(conversation.peer, now=self.clock())
                self._sync_own(AcceptedSync(conversation.peer, b""))
            else:
                assert conversation.group_id is not None
                self.store.conversations.set_request(conversation_id, False)
                self._sync_own(AcceptedSync("", conversation.group_id))
            self._send_read_receipts(conversation, self._already_read(conversation_id))
        return self.conversation_view(self._conversation(conversation_id))

    def _already_read(self, conversation_id: int) -> list[Message]:
        return [
            m
            for m in self.store.messages.newest(conversation_id, 200)
            if not m.outgoing and m.status == MessageStatus.READ and m.kind != "system"
        ]

    def _send_read_receipts(self, conversation: Conversation, read: list[Message]) -> None:
        if not read or not self.shares_presence(conversation.id):
            return
        by_sender: dict[str, list[str]] = {}
        for message in read:
            by_sender.setdefault(message.sender, []).append(message.uuid)
        for sender, ids in by_sender.items():
            if self.store.contacts.is_blocked(sender):
                continue
            if conversation.kind == "direct" or self.has_sessions(sender):
                self._encrypt_for(sender, encode_content(Receipt(RECEIPT_READ, tuple(ids))), None)

    def set_blocked(self, username: str, blocked: bool) -> None:
        """Blocks or unblocks `username` on this device. Blocking does not make a
        stranger a contact; unblocking leaves a request a request."""
        username = username.strip().lower()
        if username == self.username:
            raise ServiceError("you cannot block yourself")
        with self.store.transaction():
            now = self.clock()
            self.store.contacts.set_blocked(username, blocked, now=now)
            # Our other devices take the whole list if it is newer than theirs; past
            # the newest change seen, so a device whose clock is behind still wins
            # with the change its user just made.
            changed_at = max(now, int(self.store.settings.get(BLOCKED_CHANGED_SETTING, 0)) + 1)
            self.store.settings.set(BLOCKED_CHANGED_SETTING, changed_at)
            self._sync_own(BlockedSync(tuple(self.store.contacts.blocked()), changed_at))

    def block_request(self, conversation_id: int) -> None:
        """The request bar's "Block": blocks the peer; for a group, also the member
        whose change added the user, and leaves and deletes the group."""
        conversation = self._conversation(conversation_id)
        if conversation.peer is not None:
            self.set_blocked(conversation.peer, True)
            return
        assert conversation.group_id is not None
        change, _parent = self.store.groups.state(conversation.group_id)
        if change is not None:
            author = gs.GroupChange.from_bytes(change).author
            if author != self.username:
                self.set_blocked(author, True)
        self.delete_conversation(conversation_id)

    def delete_conversation(self, conversation_id: int) -> None:
        """Deletes a chat on this device (the request bar's "Delete", or "Leave" for
        a group, which leaves it first so the members stop sending to it)."""
        conversation = self._conversation(conversation_id)
        with self.store.transaction():
            if conversation.group_id is not None:
                members = self.store.groups.members(conversation.group_id)
                if self.username in members and len(members) > 1:
                    with contextlib.suppress(ServiceError, IdentityNotAccepted):
                        self.change_members(conversation_id, [], [self.username])
            files = self.store.conversations.delete(conversation_id)
        for name in files:
            (self.attachments_dir / name).unlink(missing_ok=True)

    def conversations(self) -> list[ConversationView]:
        return [self.conversation_view(c) for c in self.store.conversations.all()]

    def message_view(self, message: Message) -> MessageView:
        if message.kind == "deleted":
            return MessageView(
                message_id=message.id,
                conversation_id=message.conversation_id,
                outgoing=message.outgoing,
                sender=message.sender,
                body=DELETED_TEXT,
                sent_at_ms=message.sent_at,
                status=MessageStatus(message.status),
                expires_at_ms=message.expires_at,
                deleted=True,
            )
        attachment = None
        caption = ""
        if message.kind == "attachment":
            row = self.store.attachments.for_message(message.id)
            if row is not None:
                thumbnail = (
                    Thumbnail(row.thumbnail, row.thumbnail_width, row.thumbnail_height)
                    if row.thumbnail
                    else None
                )
                attachment = AttachmentView(
                    row.id,
                    row.filename,
                    row.size,
                    row.mime,
                    row.state == "ready",
                    thumbnail,
                    on_request=row.state == "remote",
                )
                caption = row.caption
        quote = None
        if message.quote_uuid is not None:
            # Only replies look their original up (by the unique uuid index), so a
            # page without replies costs no query more.
            original = self.store.messages.by_uuid(message.quote_uuid)
            here = original is not None and original.conversation_id == message.conversation_id
            quote = QuoteView(
                author=message.quote_author or "",
                # The quoted text is copied into the reply: a delete for everyone
                # must take it out of the quote as well.
                snippet=DELETED_TEXT
                if here and original is not None and original.kind == "deleted"
                else message.quote_text or "",
                message_id=original.id if here and original is not None else None,
            )
        reactions = _reactions(message.reactions)
        counts: dict[str, int] = {}
        for emoji, _at in reactions.values():
            if emoji:
                counts[emoji] = counts.get(emoji, 0) + 1
        return MessageView(
            message_id=message.id,
            conversation_id=message.conversation_id,
            outgoing=message.outgoing,
            sender=message.sender,
            # An attachment's row body is its file name (for previews and search);
            # the bubble shows the name from `attachment` and the caption as text.
            body=message.body if message.kind != "attachment" else caption,
            sent_at_ms=message.sent_at,
            status=MessageStatus(message.status),
            attachment=attachment,
            system=message.kind == "system",
            expires_at_ms=message.expires_at,
            quote=quote,
            reactions=tuple(sorted(counts.items(), key=lambda item: -item[1])),
            own_reaction=reactions.get(self.username, ("", 0))[0],
            edited=message.edited_at is not None,
        )

    def open_conversation(
        self, conversation_id: int, focus: int = -1
    ) -> tuple[ConversationView, list[MessageView]]:
        conversation = self._conversation(conversation_id)
        if focus >= 0:
            messages = self.store.messages.around(conversation_id, focus, 50)
        else:
            messages = self.store.messages.newest(conversation_id, 50)
        return self.conversation_view(conversation), [self.message_view(m) for m in messages]

    def older_messages(self, conversation_id: int, before: int) -> list[MessageView]:
        return [
            self.message_view(m) for m in self.store.messages.before(conversation_id, before, 50)
        ]

    def search(self, query: str) -> list[SearchResultView]:
        results = []
        titles: dict[int, str] = {}
        for hit in self.store.messages.search(query, 50):
            if hit.conversation_id not in titles:
                titles[hit.conversation_id] = self._conversation(hit.conversation_id).title
            results.append(
                SearchResultView(
                    hit.conversation_id,
                    titles[hit.conversation_id],
                    hit.message_id,
                    hit.snippet,
                    hit.position,
                    hit.sent_at,
                )
            )
        return results

    def _conversation(self, conversation_id: int) -> Conversation:
        conversation = self.store.conversations.get(conversation_id)
        if conversation is None:
            raise ServiceError("that conversation no longer exists")
        return conversation

    # ---- sessions -------------------------------------------------------------
    def has_sessions(self, username: str) -> bool:
        return bool(self.store.sessions.devices(username))

    def install_bundles(self, username: str, fetched: dict[str, Any]) -> list[str]:
        """Starts sessions with the devices of a fetched bundle that the account's
        newest device list names (docs/protocol.md §13), each under the identity the
        list gives it; returns identity warnings. A device the relay lists on its
        own is skipped: nothing is ever encrypted to it."""
        warnings = []
        with self.store.transaction():
            bundles = []
            for entry in fetched.get("devices", []):
                try:
                    bundles.append(RemoteBundle.from_fetched_device(entry))
                except ProtocolError as error:
                    raise ServiceError(f"{username}'s keys are invalid: {error}") from None
            signed = fetched.get("device_list")
            if username == self.username:
                # Our own other devices (for sent transcripts and syncs).
                if isinstance(signed, str) and signed:
                    with contextlib.suppress(ValueError, DeviceListError):
                        self.devices.adopt_own(base64.b64decode(signed, validate=True))
                bundles = [b for b in bundles if b.device_id != self.device_id]
            elif isinstance(signed, str) and signed:
                try:
                    change = self.devices.adopt(username, base64.b64decode(signed, validate=True))
                except StaleDeviceList:
                    pass  # the relay served an older list than one held: keep ours
                except (DeviceListError, ValueError) as error:
                    # Signed by no one (a relay's junk): as if none were served; a
                    # list held from before goes on being used.
                    log.warning("ignored %s's device list (%s)", username, type(error).__name__)
                else:
                    if change.identity_changed:
                        warnings.append(username)
                    self._device_list_notices(username, change)
            listed = self.devices.held(username)
            hold_first = False
            if listed is None:
                # No list (an account from before lists): one device, as then, whose
                # identity is the account's.
                bundles = sorted(bundles, key=lambda b: b.device_id)[:1]
            for bundle in bundles:
                identity = bundle.identity.to_bytes()
                if listed is not None:
                    named = listed.identity_of(bundle.device_id)
                    if named is None or named.to_bytes() != identity:
                        continue
                elif self.store.contacts.observe_identity(username, identity, now=self.clock()):
                    warnings.append(username)
                existing = self.store.sessions.get(username, bundle.device_id)
                if existing is not None:
                    if Session.from_bytes(existing).remote_identity == identity:
                        # A working session is kept: starting another would leave the
                        # peer's messages on this one undecryptable (and spend one
                        # of its one-time prekeys for nothing).
                        continue
                    # Another identity on that device id: its old session may still
                    # open late messages, but is never sent on again.
                    retired = Session.from_bytes(existing).archived()
                    self.store.sessions.archive(
                        username, bundle.device_id, retired.to_bytes(), now=self.clock()
                    )
                session = Session.initiate(self.identity, bundle)
                self.store.sessions.save(
                    username, bundle.device_id, session.to_bytes(), now=self.clock()
                )
                # The session's first message is our device list: the contact then
                # knows this device is the account's before anything else arrives.
                # To an identity the user has not accepted (a verified contact's
                # changed one, which may be the relay's), not even that goes: it
                # waits with the other held sends until the user accepts.
                first = encode_content(DeviceListUpdate(self.devices.own().signed))
                if self.store.contacts.unaccepted([username]):
                    hold_first = True
                else:
                    self._encrypt_to_device(username, bundle.device_id, first, None)
            if hold_first:
                self.store.held_sends.add(username, first, now=self.clock())
        return warnings

    def _encrypt_for(
        self,
        username: str,
        plaintext: bytes,
        message_id: int | None,
        devices: list[int] | None = None,
    ) -> int:
        """Queues `plaintext` to every device of `username` we have a session with
        (or to those of `devices`).

        Never to a contact whose identity changed after it was verified and is not
        yet accepted (`UNACCEPTED`, app/store/trust.py): a message of the user's
        (`message_id` set) raises IdentityNotAccepted; an automatic send (receipt,
        sender key, group update, timer change) is held unencrypted and encrypted
        by `accept_identity`. Returns how many envelopes were queued.
        """
        if self.store.contacts.unaccepted([username]):
            if message_id is not None:
                raise IdentityNotAccepted([username], group=False)
            self.store.held_sends.add(username, plaintext, now=self.clock())
            return 0
        share = self._shares_profile_key(username, message_id, plaintext)
        if share:
            for device_id in share:
                self.sealing.mark_shared(username, device_id)
            profile_key = ProfileKey(self.sealing.profile_key())
            self._encrypt_for(username, encode_content(profile_key), None, share)
        if self.store.sessions.restore_notice_due(username):
            self._send_restore_notice(username)
        count = 0
        for device_id in self._sending_devices(username):
            if devices is not None and device_id not in devices:
                continue
            self._encrypt_to_device(username, device_id, plaintext, message_id)
            count += 1
        return count

    def _sending_devices(self, username: str) -> list[int]:
        """The devices of `username` we have a session with that its newest device
        list names (all with a session, for an account without a list): a device
        the relay adds is never encrypted to."""
        listed = self.devices.devices(username)
        sessions = self.store.sessions.devices(username)
        return sessions if listed is None else [d for d in sessions if d in listed]

    def _encrypt_to_device(
        self, username: str, device_id: int, plaintext: bytes, message_id: int | None
    ) -> None:
        state = self.store.sessions.get(username, device_id)
        assert state is not None
        session = Session.from_bytes(state)
        envelope = encode_frame(FRAME_PAIRWISE, session.encrypt(plaintext))
        self.store.sessions.save(username, device_id, session.to_bytes(), now=self.clock())
        self.store.outbox.add(
            uuid.uuid4().hex, message_id, username, device_id, envelope, now=self.clock()
        )

    def _shares_profile_key(
        self, username: str, message_id: int | None, plaintext: bytes
    ) -> list[int]:
        """The devices this send first shares the profile key with (docs/protocol.md,
        "Sealed sender"): with someone the user writes to, a contact, or a group
        member getting this device's sender key, once per key and device (a device
        added later, or a new identity on one, gets it before its next message);
        never with a stranger merely sent a receipt."""
        due = self.sealing.devices_to_share(username)
        if not due:
            return []
        if message_id is not None:
            return due
        contact = self.store.contacts.get(username)
        if contact is not None and contact.accepted:
            return due
        try:
            return due if isinstance(decode_content(plaintext), SenderKey) else []
        except ProtocolError:
            return []

    def accept_sealed(self, body: bytes, server_time: int) -> IncomingResult:
        """Receives one sealed envelope (app/protocol/sealed.py). One whose outer
        layer does not open, or whose certificate is forged, expired or names an
        identity other than the inner message's session, is refused: kept in the
        quarantine with no sender (what it claims is not believed, so no chat gets
        a row) and reported by its reason. Otherwise as `accept`, under the certified
        sender."""
        try:
            unsealed = self.sealing.open(body)
        except ReplayError as error:
            # A channel envelope opened before (docs/protocol.md §11): dropped, as
            # any replay, without a trace in a chat or the quarantine.
            return IncomingResult(dropped=type(error).__name__)
        except ProtocolError as error:
            reason = type(error).__name__
            log.warning("refused a sealed envelope (%s)", reason)
            with self.store.transaction():
                self.store.quarantine.add(
                    "", 0, body, reason, server_time, now=self.clock(), conversation_id=None
                )
            return IncomingResult(dropped=reason, quarantined=True)
        certificate = unsealed.certificate
        return self.accept(certificate.username, certificate.device_id, unsealed.frame, server_time)

    def _send_restore_notice(self, username: str) -> None:
        """This profile was restored from a backup and its sessions archived
        (docs/protocol.md, "Restore"): the first message of each fresh session says
        so. Waits until there is a fresh session to carry it."""
        if not self.store.sessions.devices(username):
            return
        self.store.sessions.restore_notice_sent(username)
        notice = RestoreNotice(str(uuid.uuid4()), self.clock())
        self._encrypt_for(username, encode_content(notice), None)

    # ---- sending --------------------------------------------------------------
    def direct_conversation(self, username: str) -> ConversationView:
        username = username.strip().lower()
        if username == self.username:
            raise ServiceError("you cannot start a chat with yourself")
        with self.store.transaction():
            conversation = self.store.conversations.direct(username, now=self.clock())
            # Starting a chat is choosing the person: they are a contact now, on
            # our other devices too.
            if self.store.contacts.accept(username, now=self.clock()):
                self._sync_own(AcceptedSync(username, b""))
        return self.conversation_view(conversation)

    def recipients(self, conversation_id: int) -> list[str]:
        conversation = self._conversation(conversation_id)
        if conversation.kind == "direct":
            assert conversation.peer is not None
            return [conversation.peer]
        assert conversation.group_id is not None
        return [m for m in self.store.groups.members(conversation.group_id) if m != self.username]

    def _unaccepted_in(self, conversation: Conversation) -> list[str]:
        """The peer, or the other members, in `UNACCEPTED` (app/store/trust.py)."""
        if conversation.peer is not None:
            return self.store.contacts.unaccepted([conversation.peer])
        if conversation.group_id is None:
            return []
        members = self.store.groups.members(conversation.group_id)
        return self.store.contacts.unaccepted(m for m in members if m != self.username)

    def require_sendable(self, conversation_id: int) -> None:
        """Raises IdentityNotAccepted, naming them, while anyone the conversation
        sends to has a changed identity not yet accepted; otherwise does nothing."""
        conversation = self._conversation(conversation_id)
        blocked = self._unaccepted_in(conversation)
        if blocked:
            raise IdentityNotAccepted(blocked, group=conversation.kind == "group")
        if conversation.peer is not None and self.store.contacts.is_blocked(conversation.peer):
            raise ServiceError(f"You blocked {conversation.peer}. Unblock them to send messages.")

    def missing_sessions(self, conversation_id: int) -> list[str]:
        """Recipients with no session, or none with a device their list names."""
        missing = [name for name in self.recipients(conversation_id) if self.lacks_sessions(name)]
        if self.lacks_sessions(self.username):
            missing.append(self.username)  # our other devices get a transcript
        return missing

    def lacks_sessions(self, username: str) -> bool:
        """No session with `username`, or none with a device its list names."""
        have = set(self.store.sessions.devices(username))
        listed = self.devices.devices(username)
        if username == self.username:
            return bool(set(listed or []) - have)
        if listed is None:
            return not have
        return not have or not set(listed) <= have

    def send_text(
        self, conversation_id: int, text: str, reply_to: int | None = None
    ) -> MessageView:
        """Sends `text`; with `reply_to` (a message of this conversation) as a reply
        quoting it."""
        if not text.strip():
            raise ServiceError("an empty message is not sent")
        conversation = self._conversation(conversation_id)
        message_uuid = str(uuid.uuid4())
        sent_at = self.clock()
        quote = self._quote_of(conversation, reply_to) if reply_to is not None else None
        content = Text(message_uuid, sent_at, text, conversation.timer_seconds, quote)
        return self._send_content(conversation, content, text, "text")

    def _quote_of(self, conversation: Conversation, message_id: int) -> Quote:
        original = self.store.messages.get(message_id)
        if (
            original is None
            or original.conversation_id != conversation.id
            or original.kind == "system"
        ):
            raise ServiceError("that message can no longer be replied to")
        snippet = original.body if original.kind != "attachment" else f"Attachment: {original.body}"
        return Quote(original.uuid, original.sender, snippet[:MAX_QUOTE_SNIPPET])

    def react(self, message_id: int, emoji: str) -> MessageView:
        """Reacts to a message with `emoji`, replacing the user's earlier reaction;
        the same emoji again takes it away (as in Signal)."""
        message = self.store.messages.get(message_id)
        if message is None or message.kind == "system":
            raise ServiceError("that message can no longer be reacted to")
        conversation = self._conversation(message.conversation_id)
        reactions = _reactions(message.reactions)
        current = reactions.get(self.username, ("", 0))[0]
        chosen = "" if emoji == current else emoji
        # Never earlier than the reaction it replaces, even if the clock went back.
        at = max(self.clock(), reactions.get(self.username, ("", 0))[1] + 1)
        with self.store.transaction():
            reactions[self.username] = (chosen, at)
            self.store.messages.set_reactions(message.id, json.dumps(reactions))
            reaction = Reaction(message.uuid, message.sender, at, chosen)
            self._deliver(conversation, encode_content(reaction), None)
        updated = self.store.messages.get(message.id)
        assert updated is not None
        return self.message_view(updated)

    # ---- delete, edit, typing (issue #24; docs/protocol.md §5, types 12-14) ----
    def _own_changeable(self, message_id: int, what: str) -> tuple[Message, Conversation]:
        message = self.store.messages.get(message_id)
        if message is None or not message.outgoing or message.kind not in ("text", "attachment"):
            raise ServiceError(f"only your own messages can be {what}")
        if self.clock() - message.sent_at >= CHANGE_WINDOW_MS:
            raise ServiceError(f"messages can be {what} only within 24 hours of sending")
        return message, self._conversation(message.conversation_id)

    def delete_for_me(self, message_id: int) -> int:
        """Deletes a message on this device only (any message); nothing is sent.
        Returns its conversation's id."""
        message = self.store.messages.get(message_id)
        if message is None:
            raise ServiceError("that message no longer exists")
        with self.store.transaction():
            files = self.store.messages.delete(message_id)
        self._erase(files)
        return message.conversation_id

    def delete_for_everyone(self, message_id: int) -> MessageView:
        """Takes back one of the user's messages, within CHANGE_WINDOW_MS of sending:
        here it becomes "This message was deleted" at once, and every recipient that
        accepts the delete (type 12) does the same."""
        message, conversation = self._own_changeable(message_id, "deleted for everyone")
        with self.store.transaction():
            files = self.store.messages.tombstone(message.id)
            delete = Delete(message.uuid, self.username, self.clock())
            self._deliver(conversation, encode_content(delete), None)
        self._erase(files)
        updated = self.store.messages.get(message.id)
        assert updated is not None
        return self.message_view(updated)

    def edit_text(self, message_id: int, text: str) -> MessageView:
        """Replaces the text of one of the user's text messages, within
        CHANGE_WINDOW_MS of sending; the previous text is not kept."""
        if not text.strip():
            raise ServiceError("a message cannot be edited to nothing; delete it instead")
        message, conversation = self._own_changeable(message_id, "edited")
        if message.kind != "text":
            raise ServiceError("only text messages can be edited")
        # Never earlier than the edit it replaces, even if the clock went back.
        at = max(self.clock(), (message.edited_at or message.sent_at) + 1)
        with self.store.transaction():
            self.store.messages.edit(message.id, text, at, text[:MAX_QUOTE_SNIPPET])
            edit = Edit(message.uuid, self.username, at, text)
            self._deliver(conversation, encode_content(edit), None)
        self._erase([])
        updated = self.store.messages.get(message.id)
        assert updated is not None
        return self.message_view(updated)

    def _erase(self, files: list[str]) -> None:
        """After a delete or an edit committed: the attachment files go, and the old
        text leaves the write-ahead log too (secure_delete zeroes the freed pages)."""
        for name in files:
            (self.attachments_dir / name).unlink(missing_ok=True)
        self.store.erase_overwritten()

    @property
    def typing_indicators(self) -> bool:
        """Settings → Privacy, "Send typing indicators": off, none is sent and
        none is shown (as in Signal)."""
        return bool(self.store.settings.get(TYPING_SETTING, True))

    def set_typing_indicators(self, on: bool) -> None:
        with self.store.transaction():
            self.store.settings.set(TYPING_SETTING, bool(on))

    def typing_envelopes(self, conversation_id: int, started: bool) -> list[tuple[str, int, bytes]]:
        """A typing indicator for this chat, encrypted, as (recipient, device id,
        transport frame) to send at once; never put in the outbox, so never
        retried. None while the setting is off, to a request or someone blocked
        (`shares_presence`), or to anyone whose identity is not accepted. In a
        group, none to a device the outbox still holds something for: it could
        overtake the sender key it needs and be quarantined as undecryptable
        (pairwise, the ratchet takes envelopes out of order, and one that overtakes
        a session's first message carries the same session start)."""
        if not self.typing_indicators or not self.shares_presence(conversation_id):
            return []
        conversation = self._conversation(conversation_id)
        if self._unaccepted_in(conversation):
            return []
        plaintext = encode_content(Typing(self.clock(), started))
        envelopes: list[tuple[str, int, bytes]] = []
        with self.store.transaction():
            if conversation.peer is not None:
                peer = conversation.peer
                if self.store.sessions.restore_notice_due(peer):
                    return []  # the notice must open the new session
                for device_id in self.store.sessions.devices(peer):
                    state = self.store.sessions.get(peer, device_id)
                    assert state is not None
                    session = Session.from_bytes(state)
                    frame = encode_frame(FRAME_PAIRWISE, session.encrypt(plaintext))
                    self.store.sessions.save(peer, device_id, session.to_bytes(), now=self.clock())
                    envelopes.append((peer, device_id, frame))
                return envelopes
            assert conversation.group_id is not None
            if self.username not in self.store.groups.members(conversation.group_id):
                return []
            targets = [
                (member, device_id)
                for member in self.recipients(conversation_id)
                for device_id in self.store.sessions.devices(member)
                if not self.store.outbox.holds_for(member, device_id)
            ]
            if not targets:
                return []
            sender_key = self._own_sender_key(conversation.group_id)
            frame = encode_frame(FRAME_GROUP, sender_key.encrypt(plaintext))
            self.store.groups.set_own_sender_key(conversation.group_id, sender_key.to_bytes(), 0)
            return [(member, device_id, frame) for member, device_id in targets]

    def send_attachment(
        self,
        conversation_id: int,
        path: Path,
        blob_id: str,
        secret: AttachmentSecret,
        local_name: str,
        *,
        caption: str = "",
        thumbnail: Thumbnail | None = None,
    ) -> MessageView:
        conversation = self._conversation(conversation_id)
        message_uuid = str(uuid.uuid4())
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        pointer = AttachmentPointer(
            message_uuid,
            self.clock(),
            caption,
            blob_id,
            secret.key,
            secret.digest,
            secret.size,
            path.name,
            mime,
            conversation.timer_seconds,
            thumbnail.data if thumbnail else b"",
            thumbnail.width if thumbnail else 0,
            thumbnail.height if thumbnail else 0,
        )
        view = self._send_content(conversation, pointer, path.name, "attachment")
        with self.store.transaction():
            self.store.attachments.add(
                message_id=view.message_id,
                filename=path.name,
                mime=mime,
                size=secret.size,
                key=secret.key,
                digest=secret.digest,
                blob_id=blob_id,
                local_path=local_name,
                state="ready",
                caption=caption,
                thumbnail=pointer.thumbnail,
                thumbnail_width=pointer.thumbnail_width,
                thumbnail_height=pointer.thumbnail_height,
            )
        message = self.store.messages.get(view.message_id)
        assert message is not None
        return self.message_view(message)

    def encrypt_attachment_file(self, path: Path) -> tuple[Path, AttachmentSecret]:
        """Encrypts a file into the profile; the same ciphertext is uploaded and kept."""
        local = self.attachments_dir / f"{uuid.uuid4().hex}.enc"
        tmp = local.with_suffix(".part")
        try:
            with path.open("rb") as source, tmp.open("wb") as target:
                secret = encrypt_attachment(source, target)
            tmp.replace(local)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise ServiceError(f"cannot read {path.name}: {error.strerror}") from None
        return local, secret

    def encrypt_attachment_data(self, data: bytes) -> tuple[Path, AttachmentSecret]:
        """As `encrypt_attachment_file`, for bytes that have no file (a pasted
        image): they go into the profile encrypted, never through a plaintext file."""
        local = self.attachments_dir / f"{uuid.uuid4().hex}.enc"
        tmp = local.with_suffix(".part")
        try:
            with tmp.open("wb") as target:
                secret = encrypt_attachment(io.BytesIO(data), target)
            tmp.replace(local)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise ServiceError(f"cannot store the attachment: {error.strerror}") from None
        return local, secret

    def _send_content(
        self, conversation: Conversation, content: Content, body: str, kind: str
    ) -> MessageView:
        sent_at = getattr(content, "sent_at", self.clock())
        message_uuid = getattr(content, "message_id", str(uuid.uuid4()))
        expires = (
            sent_at + conversation.timer_seconds * 1000 if conversation.timer_seconds else None
        )
        quote = content.quote if isinstance(content, Text) else None
        with self.store.transaction():
            message = self.store.messages.add(
                conversation_id=conversation.id,
                uuid=message_uuid,
                sender=self.username,
                outgoing=True,
                body=body,
                sent_at=sent_at,
                status=MessageStatus.SENDING,
                kind=kind,
                expires_at=expires,
                quote=(quote.message_id, quote.author, quote.snippet) if quote else None,
            )
            self.store.conversations.touch(conversation.id, sent_at)
            # Writing in a request answers it: the person (or group) is accepted.
            if conversation.peer is not None:
                self.store.contacts.accept(conversation.peer, now=self.clock())
            elif conversation.request:
                self.store.conversations.set_request(conversation.id, False)
            self._deliver(conversation, encode_content(content), message.id)
            self._sync_own(
                SentTranscript(
                    conversation.peer or "", conversation.group_id or b"", encode_content(content)
                )
            )
        return self.message_view(message)

    def _record_history_chunk(self, chunk: HistoryChunk, sender_device: int) -> bool:
        row = HistoryChunkRow(
            transfer_id=chunk.transfer_id,
            index=chunk.index,
            last=chunk.last,
            messages=chunk.messages,
            total=chunk.total,
            blob_id=chunk.blob_id,
            key=chunk.key,
            digest=chunk.digest,
            size=chunk.size,
            sender_device=sender_device,
            state="pending",
        )
        return record_announcement(self.store, row, now=self.clock())

    def reaches_own_device(self, device_id: int) -> bool:
        """Whether this device has a session with that device of our account, and
        our list names it (what a history transfer needs before it announces)."""
        return device_id != self.device_id and device_id in self._sending_devices(self.username)

    def announce_history_chunk(
        self, device_id: int, chunk: HistoryChunk, transfer: OutgoingTransfer
    ) -> bool:
        """Queues `chunk`'s announcement to our device `device_id` and keeps where
        the transfer stands, in one transaction: a crash leaves both or neither, so
        a resumed transfer never skips a chunk. False (nothing changed) without a
        session with that device."""
        with self.store.transaction():
            if not self.reaches_own_device(device_id):
                return False
            self._encrypt_to_device(self.username, device_id, encode_content(chunk), None)
            save_outgoing(self.store, transfer)
        return True

    def _sync_own(self, content: Content) -> None:
        """To our other devices (those our list names that we have a session with)."""
        devices = self._sending_devices(self.username)
        if not devices:
            return
        plaintext = encode_content(content)
        for device_id in devices:
            self._encrypt_to_device(self.username, device_id, plaintext, None)

    def _deliver(
        self, conversation: Conversation, plaintext: bytes, message_id: int | None
    ) -> None:
        # A group is blocked as a whole (as Signal does) rather than sent without the
        # member: skipping them silently would fork what members see, and sending
        # to their new identity would trust it before the user did.
        self.require_sendable(conversation.id)
        if conversation.kind == "direct":
            assert conversation.peer is not None
            if not self._encrypt_for(conversation.peer, plaintext, message_id) and message_id:
                self.store.messages.set_status(message_id, MessageStatus.FAILED)
            return
        assert conversation.group_id is not None
        state = self._own_sender_key(conversation.group_id)
        frame = encode_frame(FRAME_GROUP, state.encrypt(plaintext))
        self.store.groups.set_own_sender_key(conversation.group_id, state.to_bytes(), 0)
        queued = 0
        for member in self.recipients(conversation.id):
            for device_id in self._sending_devices(member):
                self.store.outbox.add(
                    uuid.uuid4().hex, message_id, member, device_id, frame, now=self.clock()
                )
                queued += 1
        if not queued and message_id:
            self.store.messages.set_status(message_id, MessageStatus.FAILED)

    def _own_sender_key(self, group_id: bytes) -> SenderKeyState:
        group = self.store.groups.get(group_id)
        assert group is not None
        if group.own_sender_key is not None:
            return SenderKeyState.from_bytes(group.own_sender_key)
        return self._rotate_sender_key(group_id)

    def _rotate_sender_key(self, group_id: bytes) -> SenderKeyState:
        """A fresh chain and signing key, sent to the current members only."""
        state = SenderKeyState.create(group_id)
        self.store.groups.set_own_sender_key(group_id, state.to_bytes(), 0)
        distribution = encode_content(SenderKey(state.distribution().to_bytes()))
        for member in self.store.groups.members(group_id):
            if member != self.username:
                self._encrypt_for(member, distribution, None)
        return state

    def outbox_due(self, limit: int) -> list[OutboxItem]:
        """The outbox items to send now: all but those for a device that waits."""
        return self.store.outbox.due(self.clock(), limit)

    def sent(self, client_ids: list[str]) -> list[Message]:
        """Outbox entries the relay accepted; returns messages whose status changed.

        A device that took something has room again: its wait ends."""
        changed = []
        with self.store.transaction():
            items = self.store.outbox.items(client_ids)
            message_ids = {item.message_id for item in items if item.message_id is not None}
            self.store.outbox.remove(client_ids)
            self.store.outbox.clear_backoff({(item.recipient, item.device_id) for item in items})
            for message_id in message_ids:
                if self.store.outbox.count_for_message(message_id) > 0:
                    self.store.outbox.mark_partly_sent(message_id)
                    continue
                self.store.outbox.take_partly_sent(message_id)
                message = self.store.messages.get(message_id)
                if message is not None and message.status == MessageStatus.SENDING:
                    self.store.messages.set_status(message_id, MessageStatus.SENT)
                    changed.append(message_id)
        return [m for m in (self.store.messages.get(i) for i in changed) if m is not None]

    def undeliverable(self, client_ids: list[str]) -> list[Message]:
        """Outbox entries that can never be delivered (the device or account is gone,
        or 30 days passed). A message fails only when none of its copies was
        accepted: one group member's deleted account, or a removed device of the
        peer's, does not fail what the others received. An automatic entry (receipt,
        sender key, group update) has no message to show that, so it is logged
        rather than dropped without a word."""
        changed = []
        with self.store.transaction():
            items = self.store.outbox.items(client_ids)
            self.store.outbox.remove(client_ids)
            for message_id in {i.message_id for i in items if i.message_id is not None}:
                if self.store.outbox.count_for_message(message_id) > 0:
                    continue  # decided when its last copy leaves the outbox
                reached_someone = self.store.outbox.take_partly_sent(message_id)
                message = self.store.messages.get(message_id)
                if message is None or message.status != MessageStatus.SENDING:
                    continue
                status = MessageStatus.SENT if reached_someone else MessageStatus.FAILED
                self.store.messages.set_status(message_id, status)
                changed.append(message_id)
            refused_people = sorted({i.recipient for i in items if i.message_id is not None})
            if refused_people:
                log.warning("copies for %d recipients could not be delivered", len(refused_people))
            automatic = sum(1 for item in items if item.message_id is None)
            if automatic:
                log.warning("%d automatic envelopes could not be delivered", automatic)
        return [m for m in (self.store.messages.get(i) for i in changed) if m is not None]

    def deferred(
        self, refused: dict[str, float | None], rand: Callable[[], float] = random.random
    ) -> list[Message]:
        """Outbox entries the relay could not take for now (`Verdict.LATER`), by
        client id, with the `retry_after` seconds it named, if any.

        Each of their recipient devices waits `delivery.retry_delay`, one refusal
        more however many of its items came back; the entries stay, and their
        messages stay "sending". An entry refused although queued
        `UNDELIVERABLE_AFTER_MS` ago fails instead. Returns the messages that failed.
        """
        now = self.clock()
        with self.store.transaction():
            items = self.store.outbox.items(refused)
            expired = [i.client_id for i in items if delivery.expired(i.created_at, now)]
            waits: dict[tuple[str, int], float | None] = {}
            for item in items:
                if item.client_id in expired:
                    continue
                device = (item.recipient, item.device_id)
                asked = refused[item.client_id]
                before = waits.get(device)
                waits[device] = asked if before is None else max(before, asked or 0.0)
            for (recipient, device_id), retry_after in waits.items():
                previous = self.store.outbox.backoff(recipient, device_id)
                failures = (previous.failures if previous is not None else 0) + 1
                delay = delivery.retry_delay(failures, retry_after, rand())
                self.store.outbox.defer(
                    recipient, device_id, not_before=now + int(delay * 1000), failures=failures
                )
            return self.undeliverable(expired) if expired else []

    def retry(self, message_id: int) -> MessageView:
        message = self.store.messages.get(message_id)
        if message is None or not message.outgoing:
            raise ServiceError("only your own messages can be sent again")
        conversation = self._conversation(message.conversation_id)
        if message.kind == "attachment":
            raise ServiceError("send the file again to retry it")
        quote = None
        if message.quote_uuid is not None:
            quote = Quote(message.quote_uuid, message.quote_author or "", message.quote_text or "")
        content = Text(
            message.uuid, message.sent_at, message.body, conversation.timer_seconds, quote
        )
        with self.store.transaction():
            self.store.messages.set_status(message_id, MessageStatus.SENDING)
            self._deliver(conversation, encode_content(content), message_id)
        updated = self.store.messages.get(message_id)
        assert updated is not None
        return self.message_view(updated)

    # ---- groups ---------------------------------------------------------------
    def create_group(self, title: str, members: list[str]) -> ConversationView:
        group_id = uuid.uuid4().bytes
        names = sorted({m.strip().lower() for m in members if m.strip()} | {self.username})
        with self.store.transaction():
            conversation = self.store.conversations.create_group(group_id, title, now=self.clock())
            self.store.groups.create(group_id, conversation.id, title)
            # Whom the user puts in a group they chose: contacts from now on.
            for name in names:
                if name != self.username:
                    self.store.contacts.accept(name, now=self.clock())
            created = gs.create(
                group_id, title, self.username, names, self.account_identity.signing_key
            )
            self._hold_group_state(created, None)
            self._announce_group(conversation, f"You created the group “{title}”")
            self._rotate_sender_key(group_id)
        return self.conversation_view(self._conversation(conversation.id))

    def _announce_group(
        self, conversation: Conversation, system_text: str, extra: list[str] | None = None
    ) -> None:
        """Sends the signed change that made the group's state to every member (and
        to `extra`: those it removed, so they learn it)."""
        assert conversation.group_id is not None
        change, _parent = self.store.groups.state(conversation.group_id)
        assert change is not None
        payload = encode_content(GroupChangeContent(change))
        members = self.store.groups.members(conversation.group_id)
        for member in sorted(set(members) | set(extra or [])):
            if member != self.username:
                self._encrypt_for(member, payload, None)
        # Our other devices hold the group as this one does.
        self._sync_own(GroupChangeContent(change))
        self._system_message(conversation.id, system_text)

    def _hold_group_state(self, change: gs.GroupChange, previous: gs.GroupState | None) -> None:
        state = change.state
        self.store.groups.set_state(
            state.group_id,
            change.to_bytes(),
            previous.to_bytes() if previous is not None else None,
            state.title,
        )
        self.store.groups.set_members(state.group_id, state.members)
        conversation = self.store.conversations.by_group(state.group_id)
        if conversation is not None and conversation.title != state.title:
            self.store.conversations.rename(conversation.id, state.title)

    def _held_group_state(
        self, group_id: bytes
    ) -> tuple[gs.GroupState | None, gs.GroupState | None]:
        """(the state this device holds, the one before it); (None, None) for a group
        made before states were signed, until its next change."""
        change, parent = self.store.groups.state(group_id)
        return (
            gs.GroupChange.from_bytes(change).state if change else None,
            gs.GroupState.from_bytes(parent) if parent else None,
        )

    def _identity_of(self, username: str) -> PublicIdentity | None:
        if username == self.username:
            return self.account_identity.public  # a change made on another of our devices
        contact = self.store.contacts.get(username)
        if contact is None or contact.identity_key is None:
            return None
        return PublicIdentity.from_bytes(contact.identity_key)

    def change_members(
        self, conversation_id: int, add: list[str], remove: list[str]
    ) -> ConversationView:
        conversation = self._conversation(conversation_id)
        if conversation.group_id is None:
            raise ServiceError("members can be changed only in groups")
        added = tuple(a.strip().lower() for a in add if a.strip())
        removed = tuple(r.strip().lower() for r in remove if r.strip())
        key = self.account_identity.signing_key
        with self.store.transaction():
            for name in added:
                if name != self.username:
                    self.store.contacts.accept(name, now=self.clock())
            current, _parent = self._held_group_state(conversation.group_id)
            if current is None:
                # A group made before states were signed: its chain starts here, from
                # the members this device knows, with this device's user as admin.
                members = self.store.groups.members(conversation.group_id)
                current = gs.create(
                    conversation.group_id, conversation.title, self.username, members, key
                ).state
            try:
                if removed == (self.username,) and not added:
                    change = gs.leave(current, self.username, key)
                else:
                    change = gs.change(current, self.username, key, add=added, remove=removed)
            except gs.GroupStateError:
                raise ServiceError("only the group's admins can add or remove members") from None
            self._hold_group_state(change, current)
            text = ", ".join(
                [f"You added {a}" for a in added] + [f"You removed {r}" for r in removed]
            )
            self._announce_group(conversation, text, extra=list(removed))
            # A departed member must not read what follows: new keys for everyone left.
            self._rotate_sender_key(conversation.group_id)
        return self.conversation_view(self._conversation(conversation_id))

    def _system_message(self, conversation_id: int, text: str, at: int | None = None) -> Message:
        return self.store.messages.add(
            conversation_id=conversation_id,
            uuid=str(uuid.uuid4()),
            sender="",
            outgoing=False,
            body=text,
            sent_at=at if at is not None else self.clock(),
            status=MessageStatus.RECEIVED,
            kind="system",
        )

    # ---- receiving ------------------------------------------------------------
    def accept(
        self, sender: str, sender_device: int, body: bytes, server_time: int
    ) -> IncomingResult:
        """Receives one envelope and never fails because of what it holds.

        - Opened: as `receive`.
        - A replay (`ReplayError`, including a session start already used): dropped;
          nothing changes.
        - Anything else that stops it — a protocol error, or any unexpected error
          while opening it or applying what it carries: its own changes are rolled
          back, it is kept in the quarantine (ciphertext and sender, never
          plaintext) and its chat gets a "could not be decrypted" row.
        Either way the caller acknowledges it, so one bad envelope cannot block the
        mailbox. Only a failure of the device (`is_device_failure`: disk, lock,
        closed store) propagates, and then the envelope must stay unacknowledged.
        """
        try:
            return self.receive(sender, sender_device, body, server_time)
        except ReplayError as error:
            return IncomingResult(dropped=type(error).__name__)
        except ProtocolError as error:
            reason = type(error).__name__
        except Exception as error:  # contained to this one envelope, see above
            if is_device_failure(error):
                raise
            reason = type(error).__name__
            # The type only: the text or a traceback could quote what it carried.
            log.warning("opening an envelope failed unexpectedly (%s); quarantined", reason)
        if self.store.contacts.is_blocked(sender):
            # Not even a "could not be decrypted" row: nothing of theirs is kept.
            return IncomingResult(dropped=reason, blocked=True)
        with self.store.transaction():
            return self._quarantine(sender, sender_device, body, server_time, reason)

    def receive(
        self, sender: str, sender_device: int, body: bytes, server_time: int
    ) -> IncomingResult:
        """Decrypts one envelope and stores what it carries, atomically.

        Raises ProtocolError for envelopes that cannot be opened, ReplayError for
        replays, and changes nothing then (`accept` is what the client calls).
        """
        result = IncomingResult()
        kind, payload = decode_frame(body)
        with self.store.transaction():
            group_id: bytes | None = None
            if kind == FRAME_PAIRWISE:
                plaintext = self._open_pairwise(sender, sender_device, payload, result)
            else:
                group_id, _chain = group_message_chain(payload)
                state_bytes = self.store.groups.member_sender_key(group_id, sender, sender_device)
                if state_bytes is None:
                    raise NoSession("no sender key from that member for that group")
                state = SenderKeyState.from_bytes(state_bytes)
                plaintext = state.decrypt(payload)
                self.store.groups.set_member_sender_key(
                    group_id, sender, sender_device, state.to_bytes()
                )
            content = decode_content(plaintext)
            # Decrypted all the same, so the session stays in step for an unblock.
            # Only group state and sender keys are kept from a blocked member: the
            # groups shared with them must stay consistent (docs/protocol.md).
            if self.store.contacts.is_blocked(sender) and not isinstance(
                content, GroupChangeContent | SenderKey
            ):
                result.blocked = True
                return result
            if isinstance(
                content, SentTranscript | ReadSync | VerifiedSync | BlockedSync | AcceptedSync
            ):
                # From our own devices only, over a pairwise session.
                if sender == self.username and group_id is None:
                    self._apply_sync(content, result, server_time)
                return result
            if isinstance(content, HistoryChunk):
                # Our history, from another of our devices over a pairwise session
                # only: what anyone else sends as one is dropped.
                if sender == self.username and group_id is None and sender_device != self.device_id:
                    result.history_chunks = self._record_history_chunk(content, sender_device)
                return result
            if isinstance(content, DeviceListUpdate):
                # Only over the pairwise session: a list comes from the account.
                if group_id is None:
                    self._take_device_list(sender, content, result)
                return result
            if isinstance(content, ProfileKey):
                # Only over the pairwise session, whose sender is authenticated: the
                # key lets that device's sealed mail reach us (docs/protocol.md §11).
                if group_id is None:
                    self.sealing.set_peer_profile_key(sender, sender_device, content.key)
                return result
            if self._first_delivery(sender, content, plaintext):
                self._handle(
                    sender, sender_device, content, group_id, result=result, server_time=server_time
                )
        return result

    def _attachment_row(self, message_id: int, content: AttachmentPointer) -> Attachment:
        return self.store.attachments.add(
            message_id=message_id,
            filename=content.filename,
            mime=content.mime,
            size=content.size,
            key=content.key,
            digest=content.digest,
            blob_id=content.blob_id,
            local_path=None,
            state="pending" if content.size <= AUTO_DOWNLOAD_BYTES else "remote",
            caption=content.caption,
            thumbnail=content.thumbnail,
            thumbnail_width=content.thumbnail_width,
            thumbnail_height=content.thumbnail_height,
        )

    def _apply_sync(
        self,
        content: SentTranscript | ReadSync | VerifiedSync | BlockedSync | AcceptedSync,
        result: IncomingResult,
        server_time: int,
    ) -> None:
        """What another of our devices did: a message it sent, messages it read, a
        contact it verified, whom it blocked or accepted."""
        if isinstance(content, SentTranscript):
            self._apply_transcript(content, result, server_time)
        elif isinstance(content, BlockedSync):
            self._apply_blocked(content, result)
        elif isinstance(content, AcceptedSync):
            self._apply_accepted(content, result)
        elif isinstance(content, ReadSync):
            # Reading a message on one device reads it and everything before it in
            # that chat (what the other device showed), as Signal's read sync does.
            read_up_to: dict[int, int] = {}
            for message_id in content.message_ids:
                message = self.store.messages.by_uuid(message_id)
                if message is not None and not message.outgoing:
                    previous = read_up_to.get(message.conversation_id, 0)
                    read_up_to[message.conversation_id] = max(previous, message.sent_at)
            for conversation_id, up_to in read_up_to.items():
                unread = 0
                for message in self.store.messages.newest(conversation_id, 200):
                    if message.outgoing or message.kind == "system":
                        continue
                    if message.status != MessageStatus.RECEIVED:
                        continue
                    if message.sent_at > up_to:
                        unread += 1
                        continue
                    self.store.messages.set_status(message.id, MessageStatus.READ)
                    updated = self.store.messages.get(message.id)
                    if updated is not None:
                        result.updated_messages.append((conversation_id, updated))
                self.store.conversations.set_unread(conversation_id, unread)
                result.changed_conversations.add(conversation_id)
        else:
            contact = self.store.contacts.get(content.username)
            if contact is not None and contact.identity_key == content.identity:
                blocked = bool(self.store.contacts.unaccepted([content.username]))
                self.store.contacts.set_verified(
                    content.username, content.verified, now=self.clock()
                )
                if blocked and not self.store.contacts.unaccepted([content.username]):
                    self._release_held(content.username)
                conversation = self.store.conversations.by_peer(content.username)
                if conversation is not None:
                    result.changed_conversations.add(conversation.id)

    def _apply_blocked(self, content: BlockedSync, result: IncomingResult) -> None:
        """Another of our devices' blocked list, if newer than the last change this
        device made or took: a list that arrives late (the relay may hold one back)
        does not undo a later one."""
        if content.changed_at <= int(self.store.settings.get(BLOCKED_CHANGED_SETTING, 0)):
            return
        wanted = set(content.usernames) - {self.username}
        held = set(self.store.contacts.blocked())
        now = self.clock()
        for username in sorted(wanted ^ held):
            self.store.contacts.set_blocked(username, username in wanted, now=now)
            conversation = self.store.conversations.by_peer(username)
            if conversation is not None:
                result.changed_conversations.add(conversation.id)
        self.store.settings.set(BLOCKED_CHANGED_SETTING, content.changed_at)

    def _apply_accepted(self, content: AcceptedSync, result: IncomingResult) -> None:
        """A person accepted elsewhere is a contact here, with their chat (as a
        sent transcript would make it); a group accepted elsewhere stops being a
        request here. Read receipts are the accepting device's to send."""
        if content.username:
            if content.username == self.username:
                return
            conversation = self.store.conversations.direct(content.username, now=self.clock())
            self.store.contacts.accept(content.username, now=self.clock())
        else:
            found = self.store.conversations.by_group(content.group_id)
            if found is None:
                return
            conversation = found
            self.store.conversations.set_request(conversation.id, False)
        result.changed_conversations.add(conversation.id)

    def _apply_transcript(
        self, transcript: SentTranscript, result: IncomingResult, server_time: int
    ) -> None:
        inner = decode_content(transcript.content)
        if not isinstance(inner, Text | AttachmentPointer):
            return
        if transcript.group_id:
            conversation = self.store.conversations.by_group(transcript.group_id)
            if conversation is None:
                return
        else:
            if not transcript.destination or transcript.destination == self.username:
                return
            conversation = self.store.conversations.direct(transcript.destination, now=self.clock())
            self.store.contacts.accept(transcript.destination, now=self.clock())
        if self.store.messages.by_uuid(inner.message_id) is not None:
            return
        quote = inner.quote if isinstance(inner, Text) else None
        timer = inner.timer_seconds
        message = self.store.messages.add(
            conversation_id=conversation.id,
            uuid=inner.message_id,
            sender=self.username,
            outgoing=True,
            body=inner.body if isinstance(inner, Text) else inner.filename,
            sent_at=min(inner.sent_at, server_time + 60_000),
            status=MessageStatus.SENT,
            kind="text" if isinstance(inner, Text) else "attachment",
            received_at=self.clock(),
            expires_at=self.clock() + timer * 1000 if timer else None,
            quote=(quote.message_id, quote.author, quote.snippet) if quote else None,
        )
        if isinstance(inner, AttachmentPointer):
            row = self._attachment_row(message.id, inner)
            if row.state == "pending":
                result.attachments_to_fetch.append(row.id)
        self.store.conversations.touch(conversation.id, message.sent_at)
        result.new_messages.append((conversation.id, message))
        result.changed_conversations.add(conversation.id)

    def _first_delivery(self, sender: str, content: Content, plaintext: bytes) -> bool:
        """False for a group update, sender key or timer change already applied.

        Texts and attachments are recognised by their message id and receipts are
        idempotent; these three would otherwise be applied again (a membership or a
        timer put back, a sender key chain restarted), and a restore notice shown
        twice."""
        if not isinstance(
            content, GroupUpdate | GroupChangeContent | SenderKey | TimerUpdate | RestoreNotice
        ):
            return True
        digest = sha256(HANDLED_CONTENT_LABEL + sender.encode("utf-8") + b"\x00" + plaintext)
        if self.store.handled_contents.seen(digest):
            return False
        self.store.handled_contents.remember(digest, now=self.clock())
        return True

    def _open_pairwise(
        self, sender: str, device: int, payload: bytes, result: IncomingResult
    ) -> bytes:
        start = SessionStart.of_envelope(payload)  # None for a normal message
        existing = self.store.sessions.get(sender, device)
        if existing is not None:
            session = Session.from_bytes(existing)
            try:
                plaintext = session.decrypt(payload)
            except (AuthenticationError, NoSession):
                # Not this session's: a prekey message may start a new one (the peer
                # reinstalled or restarted), if it is genuinely new — `respond` asks
                # the replay memory. ReplayError propagates: it is never a new start.
                if start is None:
                    late = self._open_archived(sender, device, payload, start)
                    if late is None:
                        raise
                    return late
            else:
                self.store.sessions.save(sender, device, session.to_bytes(), now=self.clock())
                if start is not None:
                    # A later message of the start this session came from: remember
                    # the start (again) so that it can never replace this session.
                    self._remember_start(start, self.prekeys())
                return plaintext
        late = self._open_archived(sender, device, payload, start)
        if late is not None:
            return late
        if start is None:
            raise NoSession("a message arrived from a device we have no session with")
        prekeys = self.prekeys()
        session, plaintext, remote = Session.respond(
            self.identity, prekeys, payload, used_starts=self.store.session_starts
        )
        self._remember_start(start, prekeys)
        self.store.account.set_prekeys(prekeys.to_bytes())
        if existing is not None:
            # Kept whole, not dropped: when both sides start a session at once, each
            # replaces its own with the other's, and the peer goes on sending on the
            # one replaced here (`_open_archived` takes it back).
            self.store.sessions.archive(sender, device, existing, now=self.clock())
        self.store.sessions.save(sender, device, session.to_bytes(), now=self.clock())
        self._check_listed(sender, device, remote.to_bytes(), plaintext, result)
        return plaintext

    def _check_listed(
        self, sender: str, device: int, remote: bytes, plaintext: bytes, result: IncomingResult
    ) -> None:
        """A session a device of `sender` started is taken only if the account's
        newest device list names the device with that identity (docs/protocol.md
        §13). Its first message is that account's list: taken first when it is
        newer, so a device just linked is known. Raises UnlistedDevice otherwise
        (the whole envelope is then rolled back and quarantined)."""
        if sender == self.username:
            self.devices.own()  # our list is always held, made the first time
        with contextlib.suppress(ProtocolError):
            content = decode_content(plaintext)
            if isinstance(content, DeviceListUpdate):
                self._take_device_list(sender, content, result)
        if self.devices.held(sender) is None:
            # No list held (an account from before lists): its device's identity is
            # the account's, as then.
            if self.store.contacts.observe_identity(sender, remote, now=self.clock()):
                result.identity_changed.append(sender)
            return
        if self.devices.listed_identity(sender, device) != remote:
            raise UnlistedDevice("a session from a device the account's device list does not name")

    def _take_device_list(
        self, sender: str, content: DeviceListUpdate, result: IncomingResult
    ) -> None:
        if sender == self.username:
            previous = self.devices.own()
            taken = self.devices.adopt_own(content.signed)
            if taken is None:
                return  # not newer, or not under our account identity
            added, removed, rekeyed = taken.changes_from(previous)
            self._device_list_notices(self.username, ListChange(added, removed, rekeyed))
            for device_id in removed:
                self.store.sessions.delete(self.username, device_id)
                self.store.sessions.delete_archived(self.username, device_id)
            if taken.identity_of(self.device_id) is None:
                result.unlinked = True
            elif self.lacks_sessions(self.username):
                result.needs_sessions.add(self.username)
            return
        try:
            change = self.devices.adopt(sender, content.signed)
        except StaleDeviceList:
            return  # a list we hold already, or a replayed older one
        if change.identity_changed and sender not in result.identity_changed:
            result.identity_changed.append(sender)
        if self.lacks_sessions(sender):
            result.needs_sessions.add(sender)  # a device just linked: start its session
        self._device_list_notices(sender, change)

    def _device_list_notices(self, username: str, change: ListChange) -> None:
        """After a contact's (or our own) list changed: our sender keys in the groups
        shared with them start afresh at the next group message, so a removed
        device cannot read on and an added one gets the new chain; the removed
        devices' chains are forgotten. In the chat with them, "Alice linked a new
        device" / "Alice removed a device", as Signal shows such changes."""
        if not change.any:
            return
        for device_id in change.removed + change.rekeyed:
            self.store.groups.forget_device_sender_keys(username, device_id)
        for group_id in self.store.groups.shared_with(username):
            if self.username in self.store.groups.members(group_id):
                self.store.groups.set_own_sender_key(group_id, None, 0)
        if username == self.username:
            return
        conversation = self.store.conversations.by_peer(username)
        if conversation is None:
            return
        if change.added:
            self._system_message(conversation.id, f"{username} linked a new device")
        if change.removed:
            self._system_message(conversation.id, f"{username} removed a device")
        if change.rekeyed:
            self._system_message(conversation.id, f"{username} set up a device again")

    def _open_archived(
        self, sender: str, device: int, payload: bytes, start: SessionStart | None
    ) -> bytes | None:
        """A late message of a session a restore archived (docs/protocol.md, "Restore"):
        archived sessions may open it and are archived again after (decrypt-only);
        they never encrypt. None when none of them opens it."""
        replay: ReplayError | None = None
        current = self.store.sessions.get(sender, device)
        current_identity = Session.from_bytes(current).remote_identity if current else None
        for archive_id, state in self.store.sessions.archived(sender, device):
            session = Session.from_bytes(state)
            # A session replaced by a crossing start (see `_open_pairwise`) can still
            # send; one a restore retired cannot (`Session.archived`) and never will.
            replaced = session.can_encrypt and session.remote_identity == current_identity
            try:
                plaintext = session.decrypt(payload)
            except ReplayError as error:
                replay = error
                continue
            except (AuthenticationError, NoSession):
                continue
            if replaced and current is not None:
                # The peer is using it: it becomes the session again (as Signal
                # promotes the state that decrypted), the other one kept in its place.
                self.store.sessions.remove_archived(archive_id)
                self.store.sessions.archive(sender, device, current, now=self.clock())
                self.store.sessions.save(sender, device, session.to_bytes(), now=self.clock())
            else:
                self.store.sessions.update_archived(archive_id, session.archived().to_bytes())
            if start is not None:
                self._remember_start(start, self.prekeys())
            return plaintext
        if replay is not None:
            raise replay
        return None

    def _remember_start(self, start: SessionStart, prekeys: LocalPrekeys) -> None:
        """The replay memory (docs/protocol.md, "Replay memory"): a start that used no
        one-time prekey is kept while the keys it used are ours; the starts of keys
        we no longer hold are forgotten (those are refused without it)."""
        if not start.needs_memory(prekeys):
            return
        self.store.session_starts.remember(
            start.digest, start.signed_prekey_id, start.kem_prekey_id, now=self.clock()
        )
        self.store.session_starts.prune(
            prekeys.held_signed_prekey_ids(), prekeys.held_last_resort_ids()
        )

    def _quarantine(
        self, sender: str, device: int, body: bytes, server_time: int, reason: str
    ) -> IncomingResult:
        conversation = self._undecryptable_conversation(sender, body)
        self.store.quarantine.add(
            sender,
            device,
            body,
            reason,
            server_time,
            now=self.clock(),
            conversation_id=conversation.id,
        )
        message = self._system_message(
            conversation.id, f"A message from {sender} could not be decrypted"
        )
        self.store.conversations.touch(conversation.id, message.sent_at)
        result = IncomingResult(dropped=reason, quarantined=True)
        result.new_messages.append((conversation.id, message))
        result.changed_conversations.add(conversation.id)
        return result

    def _undecryptable_conversation(self, sender: str, body: bytes) -> Conversation:
        """The group chat a group message names, if the sender is in it; else the
        direct chat with the sender."""
        with contextlib.suppress(ProtocolError):
            kind, payload = decode_frame(body)
            if kind == FRAME_GROUP:
                group_id, _chain = group_message_chain(payload)
                conversation = self.store.conversations.by_group(group_id)
                if conversation is not None and sender in self.store.groups.members(group_id):
                    return conversation
        return self.store.conversations.direct(sender, now=self.clock())

    def _handle(
        self,
        sender: str,
        sender_device: int,
        content: Content,
        group_id: bytes | None,
        *,
        result: IncomingResult,
        server_time: int,
    ) -> None:
        if isinstance(content, Text | AttachmentPointer):
            if group_id is not None:
                conversation = self.store.conversations.by_group(group_id)
                if conversation is None:
                    return
            else:
                conversation = self.store.conversations.direct(sender, now=self.clock())
            if self.store.messages.by_uuid(content.message_id) is not None:
                return
            timer = content.timer_seconds
            expires = self.clock() + timer * 1000 if timer else None
            is_text = isinstance(content, Text)
            quote = content.quote if isinstance(content, Text) else None
            message = self.store.messages.add(
                conversation_id=conversation.id,
                uuid=content.message_id,
                sender=sender,
                outgoing=False,
                body=content.body if isinstance(content, Text) else content.filename,
                sent_at=min(content.sent_at, server_time + 60_000),
                status=MessageStatus.RECEIVED,
                kind="text" if is_text else "attachment",
                received_at=self.clock(),
                expires_at=expires,
                quote=(quote.message_id, quote.author, quote.snippet) if quote else None,
            )
            if isinstance(content, AttachmentPointer):
                row = self._attachment_row(message.id, content)
                if row.state == "pending":
                    result.attachments_to_fetch.append(row.id)
            message = self._apply_early_changes(sender, group_id, message, result)
            self.store.conversations.touch(conversation.id, message.sent_at, unread_delta=1)
            if conversation.timer_seconds != timer and group_id is None:
                self.store.conversations.set_timer(conversation.id, timer)
            result.new_messages.append((conversation.id, message))
            result.changed_conversations.add(conversation.id)
            # Delivery receipts go back over the pairwise session, encrypted.
            if self.store.sessions.devices(sender):
                receipt = encode_content(Receipt(RECEIPT_DELIVERED, (content.message_id,)))
                self._encrypt_for(sender, receipt, None)
        elif isinstance(content, Receipt):
            status = (
                MessageStatus.DELIVERED if content.kind == RECEIPT_DELIVERED else MessageStatus.READ
            )
            for message_id in content.message_ids:
                updated = self.store.messages.advance_status(message_id, status)
                if updated is not None:
                    result.new_messages.append((updated.conversation_id, updated))
                    result.changed_conversations.add(updated.conversation_id)
        elif isinstance(content, Reaction):
            self._apply_reaction(sender, content, group_id, result)
        elif isinstance(content, Delete | Edit):
            self._apply_change(sender, content, group_id, result)
        elif isinstance(content, Typing):
            self._apply_typing(sender, content, group_id, result, server_time)
        elif isinstance(content, GroupChangeContent):
            self._apply_group_change(sender, content, result, server_time)
        elif isinstance(content, GroupUpdate):
            # Version 1's unsigned, unnumbered member list: a relay could replay it to
            # put a removed member back. No longer applied (docs/protocol.md §6).
            return
        elif isinstance(content, SenderKey):
            distribution = SenderKeyDistribution.from_bytes(content.distribution)
            if self.store.groups.get(distribution.group_id) is None:
                return
            if sender not in self.store.groups.members(distribution.group_id):
                return
            state = SenderKeyState.from_distribution(distribution)
            self.store.groups.set_member_sender_key(
                distribution.group_id, sender, sender_device, state.to_bytes()
            )
        elif isinstance(content, RestoreNotice):
            conversation = self.store.conversations.direct(sender, now=self.clock())
            notice = self._system_message(
                conversation.id,
                f"{sender} restored Cipherline on a new device; messages continue in a new session",
            )
            self.store.conversations.touch(conversation.id, notice.sent_at)
            result.new_messages.append((conversation.id, notice))
            result.changed_conversations.add(conversation.id)
        elif isinstance(content, TimerUpdate):
            conversation = self.store.conversations.direct(sender, now=self.clock())
            if conversation.timer_seconds == content.seconds:
                return  # the timer already set: nothing changes, nothing to say
            self.store.conversations.set_timer(conversation.id, content.seconds)
            notice = self._system_message(
                conversation.id,
                f"{sender} set disappearing messages to {_timer_text(content.seconds)}",
            )
            result.new_messages.append((conversation.id, notice))
            result.changed_conversations.add(conversation.id)

    def _target_in_chat(
        self, sender: str, message_id: str, author: str, group_id: bytes | None
    ) -> Message | None:
        """The message that content from `sender` names (by id and author), if it is
        in the chat the content came through: the group it was sent to, or else the
        direct chat with `sender`. None otherwise — a crafted reference to a
        message of another chat, or one with a wrong author, is ignored."""
        target = self.store.messages.by_uuid(message_id)
        if target is None or target.kind == "system" or target.sender != author:
            return None
        if group_id is not None:
            conversation = self.store.conversations.by_group(group_id)
        else:
            conversation = self.store.conversations.by_peer(sender)
        if conversation is None or target.conversation_id != conversation.id:
            return None
        return target

    def _apply_reaction(
        self, sender: str, content: Reaction, group_id: bytes | None, result: IncomingResult
    ) -> None:
        target = self._target_in_chat(sender, content.message_id, content.author, group_id)
        if target is None:
            return
        reactions = _reactions(target.reactions)
        if reactions.get(sender, ("", -1))[1] >= content.sent_at:
            return  # a late reaction older than the one shown, or a repeat
        reactions[sender] = (content.emoji, content.sent_at)
        self.store.messages.set_reactions(target.id, json.dumps(reactions))
        updated = self.store.messages.get(target.id)
        assert updated is not None
        result.updated_messages.append((updated.conversation_id, updated))

    def _apply_change(
        self, sender: str, content: Delete | Edit, group_id: bytes | None, result: IncomingResult
    ) -> None:
        """A delete for everyone or an edit: honoured only from the message's author
        (the sender must be the author it names), for a message in the chat it came
        through, within CHANGE_WINDOW_MS of the message's sent-at. One whose message
        is not here yet is kept for it (app/store/early_changes.py)."""
        if content.author != sender:
            return
        target = self._target_in_chat(sender, content.message_id, content.author, group_id)
        if target is None:
            if self.store.messages.by_uuid(content.message_id) is not None:
                return  # another chat's message, or someone else's: ignored
            kind, body = ("delete", "") if isinstance(content, Delete) else ("edit", content.body)
            self.store.early_changes.add(
                content.message_id,
                sender,
                group_id,
                kind=kind,
                sent_at=content.sent_at,
                body=body,
                now=self.clock(),
            )
            return
        changed = self._change(target, content)
        if changed is not None:
            result.updated_messages.append((changed.conversation_id, changed))
            result.changed_conversations.add(changed.conversation_id)
            result.erase = True

    def _change(self, target: Message, content: Delete | Edit) -> Message | None:
        """Applies a delete or an edit its author sent to `target`; the message as it
        is now, or None when it does not apply."""
        if target.kind == "deleted" or content.sent_at - target.sent_at > CHANGE_WINDOW_MS:
            return None
        if isinstance(content, Delete):
            for name in self.store.messages.tombstone(target.id):
                (self.attachments_dir / name).unlink(missing_ok=True)
        else:
            if target.kind != "text" or not content.body.strip():
                return None
            if content.sent_at <= (target.edited_at or 0):
                return None  # a late edit older than the one shown, or a repeat
            snippet = content.body[:MAX_QUOTE_SNIPPET]
            self.store.messages.edit(target.id, content.body, content.sent_at, snippet)
        return self.store.messages.get(target.id)

    def _apply_early_changes(
        self, sender: str, group_id: bytes | None, message: Message, result: IncomingResult
    ) -> Message:
        """A message just stored: the deletes and edits for it that came first."""
        for early in self.store.early_changes.take(message.uuid, sender, group_id):
            content: Delete | Edit = (
                Delete(message.uuid, sender, early.sent_at)
                if early.kind == "delete"
                else Edit(message.uuid, sender, early.sent_at, early.body)
            )
            changed = self._change(message, content)
            if changed is not None:
                message = changed
                result.erase = True
        if message.kind == "deleted":
            pending = {a.id for a in self.store.attachments.pending_downloads()}
            result.attachments_to_fetch[:] = [
                a for a in result.attachments_to_fetch if a in pending
            ]
        return message

    def _apply_typing(
        self,
        sender: str,
        content: Typing,
        group_id: bytes | None,
        result: IncomingResult,
        server_time: int,
    ) -> None:
        """Shown for a chat that shares presence, never stored; not at all while the
        user turned typing indicators off, nor when it waited on the relay."""
        if not self.typing_indicators or self.clock() - server_time > TYPING_STALE_MS:
            return
        if group_id is not None:
            conversation = self.store.conversations.by_group(group_id)
            if conversation is None or sender not in self.store.groups.members(group_id):
                return
        else:
            conversation = self.store.conversations.by_peer(sender)
            if conversation is None:
                return
        if self.shares_presence(conversation.id):
            result.typing.append((conversation.id, sender, content.started))

    def _apply_group_change(
        self, sender: str, content: GroupChangeContent, result: IncomingResult, at: int
    ) -> None:
        """A signed group state from `sender` (app/protocol/group_state.py says which
        it takes); the members it adds get our sender key, the ones it removes make
        us start a new one."""
        received = gs.GroupChange.from_bytes(content.change)
        group_id = received.state.group_id
        conversation = self.store.conversations.by_group(group_id)
        current, parent = self._held_group_state(group_id) if conversation else (None, None)
        author = self._identity_of(received.author)
        try:
            if author is None or received.author == self.username:
                # Handed on by a member, signed by someone we hold no key for (or by
                # an earlier install of ours): only to join a group we do not hold.
                if current is not None or sender not in received.state.members:
                    return
                applied = gs.adopt(received, self.username)
            else:
                applied = gs.apply(
                    current, received, author.verify_key, self.username, parent=parent
                )
        except (gs.GroupStateError, AuthenticationError) as error:
            if conversation is not None:
                self._system_message(
                    conversation.id, f"A group change from {sender} was refused: {error}", at
                )
                result.changed_conversations.add(conversation.id)
            return
        if applied.outcome is gs.Outcome.CONFLICT_KEPT and conversation is not None:
            self._system_message(conversation.id, _conflict_text(received), at)
            result.changed_conversations.add(conversation.id)
            return
        new = applied.state
        if not applied.changed or new is None:
            return
        if conversation is None and self.store.contacts.is_blocked(received.author):
            return  # an invitation from someone blocked: not joined, not shown
        # Every member hands on each state it takes to the others (once: a state
        # already held is a duplicate), so an admin who sent different states of one
        # epoch to different members is seen by all of them, and all keep one.
        for member in new.members:
            if member not in (self.username, sender, received.author):
                self._encrypt_for(member, encode_content(content), None)
        if conversation is None:
            conversation = self.store.conversations.create_group(
                group_id, new.title, now=self.clock()
            )
            self.store.groups.create(group_id, conversation.id, new.title)
            self._hold_group_state(received, None)
            # Added by someone who is not a contact: a request, until accepted.
            inviter = self.store.contacts.get(received.author)
            if inviter is None or not inviter.accepted:
                self.store.conversations.set_request(conversation.id, True)
            self._system_message(
                conversation.id, f"{received.author} added you to “{new.title}”", at
            )
            result.needs_sessions.update(
                m for m in new.members if m != self.username and self.lacks_sessions(m)
            )
            result.changed_conversations.add(conversation.id)
            return
        before = set(current.members) if current else set(self.store.groups.members(group_id))
        self._hold_group_state(received, current)
        actor = received.author
        added = sorted(set(new.members) - before)
        removed = sorted(before - set(new.members))
        if applied.outcome is gs.Outcome.CONFLICT_SWITCHED:
            self._system_message(conversation.id, _conflict_text(received), at)
        if current is not None and current.title != new.title:
            self._system_message(conversation.id, f"{actor} renamed the group “{new.title}”", at)
        for name in added:
            self._system_message(conversation.id, f"{actor} added {name}", at)
        for name in removed:
            text = f"{name} left" if name == actor else f"{actor} removed {name}"
            self._system_message(conversation.id, text, at)
            self.store.groups.forget_member_sender_keys(group_id, name)
        if self.username not in new.members:
            self.store.groups.set_own_sender_key(group_id, None, 0)
        elif removed:
            self._rotate_sender_key(group_id)
        elif added:
            state = self._own_sender_key(group_id)
            distribution = encode_content(SenderKey(state.distribution().to_bytes()))
            for name in added:
                if name != self.username:
                    self._encrypt_for(name, distribution, None)
        result.needs_sessions.update(
            m for m in added if m != self.username and self.lacks_sessions(m)
        )
        result.changed_conversations.add(conversation.id)

    def attachment_secret(self, attachment_id: int) -> tuple[str, AttachmentSecret, Path]:
        row = self.store.attachments.get(attachment_id)
        if row is None or row.blob_id is None:
            raise ServiceError("that attachment is not available")
        target = self.attachments_dir / f"{uuid.uuid4().hex}.enc"
        return row.blob_id, AttachmentSecret(row.key, row.digest, row.size), target

    def request_download(self, attachment_id: int) -> bool:
        """A click on an attachment left for one (AUTO_DOWNLOAD_BYTES): it is fetched
        now. False when there is nothing to fetch (ready, or already on its way)."""
        row = self.store.attachments.get(attachment_id)
        if row is None or row.state != "remote":
            return False
        self.store.attachments.update(attachment_id, state="pending")
        return True

    def download_failed(self, attachment_id: int) -> Message | None:
        """A fetch that failed: the attachment waits for a click to try again."""
        row = self.store.attachments.get(attachment_id)
        if row is None or row.state != "pending":
            return None
        self.store.attachments.update(attachment_id, state="remote")
        return self.store.messages.get(row.message_id)

    def attachment_stored(self, attachment_id: int, local: Path) -> Message | None:
        with self.store.transaction():
            self.store.attachments.update(attachment_id, state="ready", local_path=local.name)
            row = self.store.attachments.get(attachment_id)
            return self.store.messages.get(row.message_id) if row else None

    def read_attachment(self, attachment_id: int) -> bytes:
        """A downloaded attachment decrypted into memory, never into a file: what the
        in-app viewer shows. Only for files up to AUTO_DOWNLOAD_BYTES × 4, so a
        huge one is saved rather than held in memory."""
        row = self.store.attachments.get(attachment_id)
        if row is None or row.local_path is None:
            raise ServiceError("that attachment has not been downloaded yet")
        if row.size > 4 * AUTO_DOWNLOAD_BYTES:
            raise ServiceError("that file is too large to show here; save it instead")
        out = io.BytesIO()
        try:
            with (self.attachments_dir / row.local_path).open("rb") as source:
                decrypt_attachment(source, out, AttachmentSecret(row.key, row.digest, row.size))
        except ProtocolError:
            raise ServiceError("the attachment is damaged") from None
        return out.getvalue()

    def save_attachment(self, attachment_id: int, target: Path) -> None:
        row = self.store.attachments.get(attachment_id)
        if row is None or row.local_path is None:
            raise ServiceError("that attachment has not been downloaded yet")
        tmp = target.with_name(f".{target.name}.part")
        try:
            with (
                (self.attachments_dir / row.local_path).open("rb") as source,
                tmp.open("wb") as out,
            ):
                decrypt_attachment(source, out, AttachmentSecret(row.key, row.digest, row.size))
            tmp.replace(target)
        except ProtocolError:
            tmp.unlink(missing_ok=True)
            raise ServiceError("the attachment is damaged and was not saved") from None

    # ---- reading, verification, timers ----------------------------------------
    def mark_read(self, conversation_id: int) -> list[Message]:
        conversation = self._conversation(conversation_id)
        changed: list[Message] = []
        with self.store.transaction():
            self.store.conversations.mark_read(conversation_id)
            unread = [
                m
                for m in self.store.messages.newest(conversation_id, 200)
                if not m.outgoing and m.status == MessageStatus.RECEIVED and m.kind != "system"
            ]
            for message in unread:
                self.store.messages.set_status(message.id, MessageStatus.READ)
            # Not while a request (nor to someone blocked): accepting sends them.
            self._send_read_receipts(conversation, unread)
            if unread:
                self._sync_own(ReadSync(tuple(m.uuid for m in unread)))
        return changed

    def safety_number(self, peer: str) -> SafetyNumberView:
        contact = self.store.contacts.get(peer)
        if contact is None or contact.identity_key is None:
            raise ServiceError(f"no safety number yet: exchange a message with {peer} first")
        # The account identity's: every device of the account has the same number.
        own = self.account_identity.public.to_bytes()
        return SafetyNumberView(
            peer=peer,
            digits=safety_number(own, self.username, contact.identity_key, peer),
            qr_payload=qr_payload(own, self.username, contact.identity_key, peer),
            verified=contact.verified,
            unaccepted=contact.identity_unaccepted,
        )

    def set_verified(self, peer: str, verified: bool) -> None:
        """Marking a contact verified also accepts its current identity key."""
        with self.store.transaction():
            blocked = bool(self.store.contacts.unaccepted([peer]))
            self.store.contacts.set_verified(peer, verified, now=self.clock())
            contact = self.store.contacts.get(peer)
            if contact is not None and contact.identity_key is not None:
                self._sync_own(VerifiedSync(peer, contact.identity_key, verified))
            if blocked and not self.store.contacts.unaccepted([peer]):
                self._release_held(peer)

    def accept_identity(self, peer: str, *, verified: bool = False) -> int:
        """The "Accept new safety number" action for a contact whose identity
        changed (with `verified`, also "mark as verified"): sending to it is allowed
        again and what was held for it goes out. Returns how many held sends were
        queued (0 when it was not `UNACCEPTED`)."""
        with self.store.transaction():
            was_blocked = self.store.contacts.accept_identity(
                peer, verified=verified, now=self.clock()
            )
            return self._release_held(peer) if was_blocked else 0

    def _release_held(self, peer: str) -> int:
        """Encrypts, now that `peer`'s identity is accepted, what was held for it, in
        order; then, for every group shared with it, the group's state and our
        current sender key: a new identity is a new install, which has neither."""
        held = self.store.held_sends.for_recipient(peer)
        for item in held:
            self._encrypt_for(peer, item.body, None)
        self.store.held_sends.remove([item.id for item in held])
        for conversation in self.store.conversations.all():
            if conversation.group_id is None:
                continue
            members = self.store.groups.members(conversation.group_id)
            if peer not in members or self.username not in members:
                continue
            change, _parent = self.store.groups.state(conversation.group_id)
            if change is not None:
                self._encrypt_for(peer, encode_content(GroupChangeContent(change)), None)
            state = self._own_sender_key(conversation.group_id)
            distribution = encode_content(SenderKey(state.distribution().to_bytes()))
            self._encrypt_for(peer, distribution, None)
        return len(held)

    def acknowledge_identity(self, peer: str) -> None:
        with self.store.transaction():
            self.store.contacts.acknowledge_change(peer)

    def set_timer(self, conversation_id: int, seconds: int) -> None:
        """Sets the conversation's timer; choosing the one already set does nothing
        (no notice here, no update to the peer)."""
        conversation = self._conversation(conversation_id)
        if conversation.timer_seconds == seconds:
            return
        with self.store.transaction():
            self.store.conversations.set_timer(conversation_id, seconds)
            self._system_message(
                conversation_id, f"You set disappearing messages to {_timer_text(seconds)}"
            )
            if conversation.kind == "direct" and conversation.peer:
                update = TimerUpdate(str(uuid.uuid4()), self.clock(), seconds)
                self._encrypt_for(conversation.peer, encode_content(update), None)

    def expire(self) -> dict[int, list[int]]:
        """Deletes the messages whose timer ran out; returns their ids by conversation."""
        expired: dict[int, list[int]] = {}
        with self.store.transaction():
            for message_id, conversation in self.store.messages.delete_expired(self.clock()):
                expired.setdefault(conversation, []).append(message_id)
        return expired


def _reactions(stored: str | None) -> dict[str, tuple[str, int]]:
    """A message's reactions column (schema.py, migration 8): {username: (emoji, at)}."""
    if not stored:
        return {}
    try:
        raw = json.loads(stored)
        return {str(name): (str(value[0]), int(value[1])) for name, value in raw.items()}
    except (ValueError, TypeError, IndexError, AttributeError):
        return {}


def _conflict_text(received: gs.GroupChange) -> str:
    """What a member says on seeing two states of one epoch (it keeps the one with
    the lower digest, as every member does)."""
    return (
        f"{received.author} sent a member list that differs from another one for the same"
        " change of this group (two admins at once, or one admin telling members"
        " different things); every member now keeps the same one"
    )


def _timer_text(seconds: int) -> str:
    if seconds == 0:
        return "off"
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"
