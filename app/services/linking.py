"""Linking a device, over the relay's link mailbox (docs/protocol.md §14).

Two sides, each a plain object whose blocking steps the UI runs in a worker:

- `NewDeviceLinking`, on the computer being set up: opens the mailbox and shows
  its invite (QR text and short code), waits for the existing device's key and
  answers with this device's name and identity, showing the confirmation code;
  then waits for the provision (or refusal) and makes the profile from it.
- `ExistingDeviceLinking`, in Settings → Devices on a device of the account:
  takes the scanned or typed code, waits for the new device's hello, shows its
  name and the confirmation code, and on approval registers it (`Client.approve_link`)
  and sends the provision; or sends a refusal.

Mailbox layout: the existing device posts its public key as its message 0, then
the provision's chunks; the new device posts the hello's chunks. Everything but
the two public keys is sealed under the link keys, so the relay forwards
ciphertext and cannot finish a link on its own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from app.crypto import RFC9106_SECOND_RECOMMENDED, Argon2Params
from app.net import NotFound, RateLimited, RelayClient, RelayError
from app.protocol.errors import ProtocolError
from app.protocol.identity import DeviceIdentity, LocalPrekeys
from app.protocol.linking import (
    DeviceHello,
    ExistingDeviceLink,
    LinkCodeError,
    LinkError,
    LinkInvite,
    LinkRefusal,
    NewDeviceLink,
    Provision,
    ShortCode,
    parse_link_code,
)
from app.services.account import LinkedAccount, Profile, create_linked_account
from app.services.client import Client
from app.services.messenger import Messenger, ServiceError

log = logging.getLogger("cipherline.linking")

NEW = "new"
EXISTING = "existing"
# How long one poll of the mailbox waits at the relay; the whole wait is bounded
# by the mailbox's life (ten minutes), after which the relay answers 404.
POLL_SECONDS = 5.0
PUBLIC_KEY_LENGTH = 32
# The relay keeps a link mailbox ten minutes; a little more for clock skew.
LINK_LIFETIME_SECONDS = 11 * 60


class LinkCancelled(ServiceError):
    """The user closed the dialog."""


@dataclass(frozen=True)
class LinkRequest:
    """What the new device shows: the QR text and the same as a code to type."""

    qr_text: str
    short_code: str
    expires_at: int


def _wait(
    relay: RelayClient,
    mailbox_id: str,
    role: str,
    after: int,
    cancelled: threading.Event,
) -> list[tuple[int, bytes]]:
    # A relay that stays unreachable must not keep the dialog waiting for ever:
    # past the mailbox's life nothing can arrive.
    deadline = time.monotonic() + LINK_LIFETIME_SECONDS
    while not cancelled.is_set():
        if time.monotonic() > deadline:
            raise ServiceError("The link request expired. Start again on the new device.")
        try:
            messages = relay.link_messages(mailbox_id, role, after, wait=POLL_SECONDS)
        except NotFound:
            raise ServiceError(
                "The link request expired or was cancelled on the other device. Start again."
            ) from None
        except RelayError:
            # A dropped connection: the mailbox keeps what was posted; poll again.
            if cancelled.wait(1.0):
                break
            continue
        if messages:
            return messages
    raise LinkCancelled("Linking was cancelled.")


def _post_all(relay: RelayClient, mailbox_id: str, role: str, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            while True:
                try:
                    relay.post_link_message(mailbox_id, role, chunk)
                    break
                except RateLimited as limited:
                    # A large provision is many chunks: posted at the relay's pace.
                    time.sleep(min(limited.retry_after, 10.0))
    except NotFound:
        raise ServiceError("The link request expired. Start again on the new device.") from None
    except RelayError as error:
        raise ServiceError(f"Could not reach the relay to link the device: {error}") from None


class NewDeviceLinking:
    def __init__(self, profile: Profile, device_name: str) -> None:
        self.profile = profile
        self.device_name = device_name.strip() or "New device"
        self.identity: DeviceIdentity
        self.prekeys: LocalPrekeys
        self.identity, self.prekeys = Messenger.prepare_account()
        self.cancelled = threading.Event()
        self._link = NewDeviceLink()
        self._relay = profile.relay(timeout=10)
        self._mailbox_id: str | None = None
        self._provision: Provision | None = None

    def open(self) -> LinkRequest:
        try:
            mailbox_id, expires_at = self._relay.open_link_mailbox(self._link.public_key)
        except RelayError as error:
            raise ServiceError(f"Could not reach the relay to start linking: {error}") from None
        self._mailbox_id = mailbox_id
        invite: LinkInvite = self._link.invite(mailbox_id)
        return LinkRequest(invite.qr_text(), invite.short_code(), expires_at)

    def wait_for_existing_device(self) -> str:
        """Blocks until the existing device answers; sends this device's hello and
        returns the confirmation code to show."""
        assert self._mailbox_id is not None
        messages = _wait(self._relay, self._mailbox_id, EXISTING, -1, self.cancelled)
        existing_key = messages[0][1]
        if messages[0][0] != 0 or len(existing_key) != PUBLIC_KEY_LENGTH:
            raise ServiceError("The other device sent something unexpected. Start again.")
        hello = DeviceHello(self.device_name, self.identity.public.to_bytes())
        chunks, code = self._link.respond(existing_key, hello)
        _post_all(self._relay, self._mailbox_id, NEW, chunks)
        return code

    def wait_for_approval(self) -> Provision:
        """Blocks until the existing device approves (its provision, checked) or
        refuses (ServiceError with its reason)."""
        assert self._mailbox_id is not None
        after = 0
        while True:
            for index, chunk in _wait(
                self._relay, self._mailbox_id, EXISTING, after, self.cancelled
            ):
                after = index
                try:
                    opened = self._link.receive(chunk)
                except LinkError:
                    raise ServiceError(
                        "The answer from the other device could not be verified: the"
                        " confirmation codes may not have matched. Start again."
                    ) from None
                if isinstance(opened, LinkRefusal):
                    raise ServiceError(f"The other device declined: {opened.reason}")
                if opened is not None:
                    self._provision = opened
                    return opened

    @property
    def history_offered(self) -> bool:
        """Whether the existing device will send its history (after `wait_for_approval`):
        the new device's client then reports `HistoryProgress` events as it arrives."""
        return self._provision is not None and self._provision.history_offer

    def finish(
        self, passphrase: str | None, *, kdf: Argon2Params = RFC9106_SECOND_RECOMMENDED
    ) -> Messenger:
        """Makes this device's profile from the provision."""
        provision = self._provision
        assert provision is not None
        linked = LinkedAccount(
            username=provision.username,
            device_id=provision.device_id,
            device_name=self.device_name,
            relay_token=provision.relay_token,
            account_identity=provision.account_identity,
            device_list=provision.device_list,
            sync_state=provision.sync_state,
        )
        messenger = create_linked_account(
            self.profile, linked, self.identity, self.prekeys, passphrase, kdf=kdf
        )
        self.close()
        return messenger

    def cancel(self) -> None:
        self.cancelled.set()

    def close(self) -> None:
        self.cancelled.set()
        if self._mailbox_id is not None:
            with contextlib.suppress(RelayError):  # it expires by itself
                self._relay.close_link_mailbox(self._mailbox_id)
        self._link.close()
        self._relay.close()


class ExistingDeviceLinking:
    def __init__(self, client: Client, relay: RelayClient) -> None:
        self.client = client
        self.cancelled = threading.Event()
        self._relay = relay
        self._link = ExistingDeviceLink()
        self._hello: DeviceHello | None = None
        # The history transfer `approve(transfer_history=True)` started: its result
        # is how many messages were sent (Client.transfer_history).
        self.history_transfer: Future[int] | None = None

    def start(self, code_text: str) -> None:
        """Takes the QR text or the typed code and answers the new device with this
        side's key. Raises ServiceError with a sentence for a wrong code."""
        try:
            code = parse_link_code(code_text)
        except LinkCodeError as error:
            raise ServiceError(str(error)) from None
        mailbox_key = None
        if isinstance(code, ShortCode):
            try:
                mailbox_key = self._relay.link_mailbox_key(code.mailbox_id)
            except NotFound:
                raise ServiceError(
                    "No device is waiting with that code: check it, or start again on"
                    " the new device."
                ) from None
            except RelayError as error:
                raise ServiceError(f"Could not reach the relay: {error}") from None
        try:
            own_key = self._link.start(code, mailbox_key=mailbox_key)
        except LinkCodeError as error:
            raise ServiceError(str(error)) from None
        _post_all(self._relay, self._link.mailbox_id, EXISTING, [own_key])

    def wait_for_new_device(self) -> tuple[str, str]:
        """Blocks until the new device's hello arrives: (its name, the confirmation
        code both screens show)."""
        after = -1
        while True:
            for index, chunk in _wait(
                self._relay, self._link.mailbox_id, NEW, after, self.cancelled
            ):
                after = index
                try:
                    hello = self._link.receive_hello(chunk)
                except LinkError:
                    raise ServiceError(
                        "The new device's answer could not be verified. Start again."
                    ) from None
                if hello is not None:
                    self._hello = hello
                    return hello.device_name, self._link.confirmation_code

    def approve(
        self,
        *,
        progress: Callable[[str], None] | None = None,
        transfer_history: bool = False,
    ) -> None:
        """Registers the new device, names it in the account's list and sends it
        the account (identity, contacts, groups, list). With `transfer_history`
        the provision offers this device's history and, once it is sent, the
        transfer starts in the background (`history_transfer`; progress as
        `HistoryProgress(sending=True)` events from the client)."""
        hello = self._hello
        assert hello is not None
        try:
            identity = hello.identity()
        except ProtocolError:
            raise ServiceError("The new device sent an unusable identity. Start again.") from None
        if progress is not None:
            progress("Adding the device to your account…")
        linked = self.client.approve_link(hello.device_name, identity).result(timeout=60)
        chunks = self._link.provision(
            Provision(
                username=linked.username,
                device_id=linked.device_id,
                relay_token=linked.relay_token,
                account_identity=linked.account_identity,
                device_list=linked.device_list,
                sync_state=linked.sync_state,
                history_offer=transfer_history,
            )
        )
        if progress is not None:
            progress("Sending your contacts and groups…")
        _post_all(self._relay, self._link.mailbox_id, EXISTING, chunks)
        self._link.close()
        if transfer_history:
            # Waits (on the client's history threads) for the new device's keys,
            # which reach the relay once it has made its profile from the provision.
            self.history_transfer = self.client.transfer_history(linked.device_id)

    def refuse(self) -> None:
        """Tells the new device the link was declined (best effort)."""
        try:
            chunks = self._link.refuse("the link was declined on your other device")
            _post_all(self._relay, self._link.mailbox_id, EXISTING, chunks)
        except (ServiceError, LinkError) as error:
            # The new device then hears nothing and its code expires on its own.
            log.info("the refusal did not reach the new device (%s)", type(error).__name__)
        finally:
            self._link.close()

    def cancel(self) -> None:
        self.cancelled.set()
