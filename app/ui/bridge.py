"""The Qt face of the client services.

Every call is handed to the services, which run it on their own threads and
answer through futures or events; answers come back here as signals on the UI
thread. Nothing in this class blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal, Slot

from app.services.client import Client, Closing
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
    ServiceError,
    TypingChanged,
)
from app.services.views import ConversationView, MessageView, Thumbnail


class ClientBridge(QObject):
    conversations_changed = Signal(list)
    conversation_opened = Signal(object, list, int)  # view, messages, message to focus or -1
    older_loaded = Signal(int, list)
    messages_changed = Signal(int, list)
    messages_expired = Signal(int, list)  # conversation id, deleted message ids
    search_finished = Signal(str, list)
    safety_number_ready = Signal(object)
    connection_changed = Signal(bool)
    incoming_message = Signal(object)  # IncomingMessage
    identity_changed = Signal(str)
    error = Signal(str)
    devices_listed = Signal(list)
    contacts_listed = Signal(list)  # usernames
    blocked_listed = Signal(list)  # usernames
    typing_changed = Signal(int, str, bool)  # conversation id, who, started
    typing_setting_loaded = Signal(bool)
    device_unlinked = Signal(str)  # why; this device no longer belongs to the account
    # A history transfer moved on (issue #19): HistoryProgress, `sending` on the
    # device giving its history, not on the one receiving it.
    history_progress = Signal(object)

    _event_arrived = Signal(object)
    _call_finished = Signal(object, object)  # callback, result

    def __init__(self, client: Client) -> None:
        super().__init__()
        self.client = client
        self._event_arrived.connect(self._dispatch_event)
        self._call_finished.connect(self._deliver)
        client.set_listener(self._event_arrived.emit)

    # ---- plumbing -----------------------------------------------------------
    def _when_done(self, future: Future[Any], callback: Callable[[Any], None]) -> None:
        def done(finished: Future[Any]) -> None:
            error = finished.exception()
            if isinstance(error, Closing):
                return
            if error is not None:
                self.error.emit(self.client.describe_error(error))
            else:
                self._call_finished.emit(callback, finished.result())

        future.add_done_callback(done)

    @Slot(object, object)
    def _deliver(self, callback: Callable[[Any], None], result: Any) -> None:
        callback(result)

    @Slot(object)
    def _dispatch_event(self, event: Event) -> None:
        match event:
            case ConversationsChanged(conversations):
                self.conversations_changed.emit(conversations)
            case MessagesChanged(conversation_id, messages):
                self.messages_changed.emit(conversation_id, messages)
            case MessagesExpired(conversation_id, message_ids):
                self.messages_expired.emit(conversation_id, list(message_ids))
            case IncomingMessage():
                self.incoming_message.emit(event)
            case ConnectionChanged(connected):
                self.connection_changed.emit(connected)
            case IdentityChanged(peer):
                self.identity_changed.emit(peer)
            case TypingChanged(conversation_id, sender, started):
                self.typing_changed.emit(conversation_id, sender, started)
            case DeviceUnlinked(reason):
                self.device_unlinked.emit(reason)
            case HistoryProgress():
                self.history_progress.emit(event)
            case ServiceError(text):
                self.error.emit(text)

    def _ignore(self, _result: object) -> None:
        pass

    # ---- calls from widgets -------------------------------------------------
    def refresh_conversations(self) -> None:
        self._when_done(self.client.conversations(), self.conversations_changed.emit)

    def open_conversation(self, conversation_id: int, focus_message_id: int = -1) -> None:
        def opened(result: tuple[ConversationView, list[MessageView]]) -> None:
            view, messages = result
            self.conversation_opened.emit(view, messages, focus_message_id)

        self._when_done(self.client.open_conversation(conversation_id, focus_message_id), opened)

    @Slot(int, int)
    def load_older(self, conversation_id: int, before_message_id: int) -> None:
        self._when_done(
            self.client.older_messages(conversation_id, before_message_id),
            lambda older: self.older_loaded.emit(conversation_id, older),
        )

    def send_text(self, conversation_id: int, text: str, reply_to: int | None = None) -> None:
        self._when_done(self.client.send_text(conversation_id, text, reply_to), self._ignore)

    @Slot(int, str)
    def react(self, message_id: int, emoji: str) -> None:
        self._when_done(self.client.react(message_id, emoji), self._ignore)

    def send_file(
        self,
        conversation_id: int,
        path: Path,
        *,
        caption: str = "",
        thumbnail: Thumbnail | None = None,
        data: bytes | None = None,
    ) -> None:
        self._when_done(
            self.client.send_file(
                conversation_id, path, caption=caption, thumbnail=thumbnail, data=data
            ),
            self._ignore,
        )

    def download_attachment(self, attachment_id: int) -> None:
        self._when_done(self.client.download_attachment(attachment_id), self._ignore)

    def read_attachment(self, attachment_id: int, callback: Callable[[bytes], None]) -> None:
        """The decrypted file, in memory only (the in-app image viewer)."""
        self._when_done(self.client.read_attachment(attachment_id), callback)

    def save_attachment(self, attachment_id: int, target: Path) -> None:
        self._when_done(self.client.save_attachment(attachment_id, target), self._ignore)

    @Slot(int)
    def delete_for_me(self, message_id: int) -> None:
        self._when_done(self.client.delete_for_me(message_id), self._ignore)

    @Slot(int)
    def delete_for_everyone(self, message_id: int) -> None:
        self._when_done(self.client.delete_for_everyone(message_id), self._ignore)

    def edit_text(self, message_id: int, text: str) -> None:
        self._when_done(self.client.edit_text(message_id, text), self._ignore)

    def send_typing(self, conversation_id: int, started: bool) -> None:
        # Fire and forget: a typing indicator that fails is not worth a word.
        self.client.send_typing(conversation_id, started)

    def load_typing_setting(self) -> None:
        self._when_done(self.client.typing_indicators(), self.typing_setting_loaded.emit)

    def set_typing_indicators(self, on: bool) -> None:
        self._when_done(self.client.set_typing_indicators(on), self._ignore)

    def retry(self, message_id: int) -> None:
        self._when_done(self.client.retry(message_id), self._ignore)

    def mark_read(self, conversation_id: int) -> None:
        self._when_done(self.client.mark_read(conversation_id), self._ignore)

    def start_direct(self, username: str) -> None:
        self._when_done(
            self.client.start_direct(username),
            lambda view: self.open_conversation(view.conversation_id),
        )

    def create_group(self, title: str, members: list[str]) -> None:
        self._when_done(
            self.client.create_group(title, members),
            lambda view: self.open_conversation(view.conversation_id),
        )

    def add_member(self, conversation_id: int, username: str) -> None:
        self._when_done(self.client.add_member(conversation_id, username), self._ignore)

    def remove_member(self, conversation_id: int, username: str) -> None:
        self._when_done(self.client.remove_member(conversation_id, username), self._ignore)

    def search(self, query: str) -> None:
        self._when_done(
            self.client.search(query), lambda results: self.search_finished.emit(query, results)
        )

    def request_safety_number(self, peer: str) -> None:
        self._when_done(self.client.safety_number(peer), self.safety_number_ready.emit)

    @Slot(str, bool)
    def set_verified(self, peer: str, verified: bool) -> None:
        self._when_done(self.client.set_verified(peer, verified), self._ignore)

    def acknowledge_identity(self, peer: str) -> None:
        self._when_done(self.client.acknowledge_identity(peer), self._ignore)

    @Slot(str, bool)
    def accept_identity(self, peer: str, verified: bool) -> None:
        """The "Accept new safety number" action; the conversations event that
        follows clears the banner and unblocks the composer."""
        self._when_done(self.client.accept_identity(peer, verified=verified), self._ignore)

    def set_timer(self, conversation_id: int, seconds: int) -> None:
        self._when_done(self.client.set_timer(conversation_id, seconds), self._ignore)

    # ---- contacts, message requests, blocking -------------------------------------
    def list_contacts(self) -> None:
        self._when_done(self.client.contacts(), self.contacts_listed.emit)

    def list_blocked(self) -> None:
        self._when_done(self.client.blocked_contacts(), self.blocked_listed.emit)

    def accept_request(self, conversation_id: int) -> None:
        self._when_done(self.client.accept_request(conversation_id), self._ignore)

    def block_request(self, conversation_id: int) -> None:
        self._when_done(self.client.block_request(conversation_id), self._ignore)

    def delete_conversation(self, conversation_id: int) -> None:
        self._when_done(self.client.delete_conversation(conversation_id), self._ignore)

    def set_blocked(self, username: str, blocked: bool) -> None:
        """Blocks or unblocks; the lists of blocked people and the chats follow."""
        self._when_done(
            self.client.set_blocked(username, blocked), lambda _result: self.list_blocked()
        )

    # ---- devices and the app lock -------------------------------------------------
    def list_devices(self) -> None:
        self._when_done(self.client.devices(), self.devices_listed.emit)

    def history_state(
        self, callback: Callable[[HistoryProgress | None], None], *, sending: bool = False
    ) -> None:
        """Where the newest history transfer stands (to this device, or `sending`
        from it), for a screen that opens while one may be running: events only
        say what changes from then on."""
        self._when_done(self.client.history_progress(sending=sending), callback)

    def remove_device(self, device_id: int) -> None:
        self._when_done(self.client.remove_device(device_id), self._ignore)

    def lock_available(self) -> bool:
        return self.client.lock_available()

    def check_passphrase(self, passphrase: str, callback: Callable[[bool], None]) -> None:
        self._when_done(self.client.check_passphrase(passphrase), callback)
