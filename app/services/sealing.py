"""Sealed sender on the client: what the messenger keeps for it and decides.

No network and no threads (the client fetches certificates and registers the
delivery token); everything here runs on the core thread, inside the messenger's
transactions. State lives in the store's settings table:

- `sealed.profile_key`: this device's profile key (hex), made once. Its delivery
  token (`sealed.access_key`) is registered with the relay, and the key itself is
  shared with contacts inside encrypted messages (content type 15).
- `sealed.registered`: the token and "allow anyone" last registered, so a change
  is registered again.
- `sealed.allow_anyone`: the user's "allow sealed messages from anyone" setting.
- `sealed.certificate` / `sealed.certificate_expires`: the relay's certificate
  for this device, reused until shortly before it expires.
- `sealed.peer.<username>.<device>`: a contact device's profile key.
- `sealed.shared.<username>.<device>`: the profile key last shared with that
  contact device, and the identity of the session it went over (a new device or
  a new identity on the device gets the key again).

When a send cannot be sealed (no delivery key of the recipient device, no valid
certificate, no pinned relay key), it goes authenticated: docs/threat-model.md.

Sealed channels (docs/protocol.md §11) live in their own tables
(`Store.sealed_channels`), never in settings:

- Sending: the first sealed copy to a contact device is a version 1 envelope
  that carries a fresh channel seed, and so is every one after it until one of
  them is known to have reached the relay (it left the outbox): a channel
  envelope before that could reach a recipient that never got the seed. From
  then on, copies to that device are channel envelopes, with no public-key
  operation. A channel is bound to one certificate and one session: a renewed
  certificate, a new identity on the device or a session replaced (started anew
  by either side) opens a new one, as does the channel's last message.
- A copy still in the outbox keeps its channel envelope (`sealed_send_pending`):
  a retry sends the same bytes again instead of spending another index, so
  failed sends never push the recipient's window out of reach.
- Receiving: a channel's window of expected tags and their keys, bound to the
  certificate of its opener. A device keeps its two newest channels per contact
  device (the previous one for envelopes still on their way), each until its
  certificate expires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from app.config import SERVER_CONFIG_NAME, ConfigError, ServerConfig
from app.crypto import CryptoError, VerifyKey, random_bytes, sha256
from app.protocol.content import FRAME_PAIRWISE, decode_frame
from app.protocol.device_list import open_device_list
from app.protocol.encoding import Writer
from app.protocol.errors import NoSession, ProtocolError
from app.protocol.identity import DeviceIdentity, PublicIdentity
from app.protocol.sealed import (
    CHANNEL_SEED_LENGTH,
    PROFILE_KEY_LENGTH,
    CertificateCache,
    ExpiredCertificate,
    IdentityMismatch,
    ReceiveChannel,
    SendChannel,
    UnknownChannelTag,
    Unsealed,
    access_key,
    channel_id,
    channel_tag,
    check_identity,
    is_channel_envelope,
    open_sealed,
    seal,
)
from app.protocol.session import Envelope, Session
from app.store import Store
from app.store.database import SendChannelRow

# A certificate is renewed this long before it expires, so one never expires in
# flight between sealing and the recipient's check (the relay keeps mail 30 days,
# so a recipient's check is against the time it was sealed plus this slack).
CERTIFICATE_RENEW_MS = 2 * 3_600_000
PROFILE_KEY = "sealed.profile_key"
REGISTERED = "sealed.registered"
ALLOW_ANYONE = "sealed.allow_anyone"
CERTIFICATE = "sealed.certificate"
CERTIFICATE_EXPIRES = "sealed.certificate_expires"
# A channel is opened only by a copy the relay always takes (its limit is 256 KiB
# an envelope): an opener refused for its size would go authenticated, leaving the
# recipient without the seed of the channel envelopes that follow.
MAX_OPENER_FRAME = 96 * 1024
# Channels a device keeps per contact device: the newest, and the one before for
# its envelopes still on their way.
RECEIVE_CHANNELS_KEPT = 2


class Addressed(Protocol):
    """One copy to send: an outbox item, or a typing indicator that never enters
    the outbox but tells the relay who writes to whom just as plainly."""

    @property
    def client_id(self) -> str: ...
    @property
    def recipient(self) -> str: ...
    @property
    def device_id(self) -> int: ...
    @property
    def body(self) -> bytes: ...


def pinned_keys(profile: Path) -> tuple[VerifyKey, ...]:
    """The relay certificate keys the profile's server config pins (none when the
    config is missing or pins none)."""
    try:
        config = ServerConfig.load(profile / SERVER_CONFIG_NAME)
    except ConfigError:
        return ()
    keys = []
    for text in config.sender_certificate_keys:
        try:
            keys.append(VerifyKey(bytes.fromhex(text)))
        except (ValueError, CryptoError):
            continue
    return tuple(keys)


class Sealing:
    def __init__(
        self,
        store: Store,
        identity: DeviceIdentity,
        trusted: tuple[VerifyKey, ...],
        clock: Callable[[], int],
    ) -> None:
        self.store = store
        self.identity = identity
        self.own_public = identity.public  # computing it signs: once
        self.trusted = trusted
        self.clock = clock
        self._certificates = CertificateCache()
        self._identities: dict[bytes, PublicIdentity] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.trusted)

    # ---- this device's delivery token ------------------------------------------
    def profile_key(self) -> bytes:
        stored = self.store.settings.get(PROFILE_KEY)
        if isinstance(stored, str):
            return bytes.fromhex(stored)
        key = random_bytes(PROFILE_KEY_LENGTH)
        self.store.settings.set(PROFILE_KEY, key.hex())
        return key

    def allow_anyone(self) -> bool:
        return bool(self.store.settings.get(ALLOW_ANYONE, False))

    def set_allow_anyone(self, on: bool) -> None:
        self.store.settings.set(ALLOW_ANYONE, on)

    def access_due(self) -> tuple[bytes, bool] | None:
        """(delivery token, allow anyone) to register with the relay, or None when
        the relay has them already."""
        if not self.enabled:
            return None
        wanted = (access_key(self.profile_key()), self.allow_anyone())
        if self.store.settings.get(REGISTERED) == [wanted[0].hex(), wanted[1]]:
            return None
        return wanted

    def access_registered(self, key: bytes, anyone: bool) -> None:
        self.store.settings.set(REGISTERED, [key.hex(), anyone])

    # ---- this device's certificate -----------------------------------------------
    def certificate(self) -> bytes | None:
        """The certificate to seal with, if one is valid for a while yet."""
        stored = self.store.settings.get(CERTIFICATE)
        expires = self.store.settings.get(CERTIFICATE_EXPIRES, 0)
        if not isinstance(stored, str) or expires - CERTIFICATE_RENEW_MS <= self.clock():
            return None
        return bytes.fromhex(stored)

    def certificate_due(self) -> bool:
        return self.enabled and self.certificate() is None

    def store_certificate(self, certificate: bytes, expires: int) -> None:
        self.store.settings.set(CERTIFICATE, certificate.hex())
        self.store.settings.set(CERTIFICATE_EXPIRES, expires)

    # ---- contacts' profile keys ----------------------------------------------------
    def _shared_marker(self, username: str, device_id: int) -> list[str] | None:
        """[profile key, remote identity] (hex) for the device's current session, or
        None without one."""
        state = self.store.sessions.get(username, device_id)
        if state is None:
            return None
        try:
            identity = Session.from_bytes(state).remote_identity
        except ProtocolError:
            return None
        return [self.profile_key().hex(), identity.hex()]

    def devices_to_share(self, username: str) -> list[int]:
        """The devices of `username` with a session that do not hold the current
        profile key yet: a device added after it was shared, or one whose session
        now belongs to another identity (a reinstall), gets it too."""
        if not self.enabled:
            return []
        due = []
        for device_id in self.store.sessions.devices(username):
            marker = self._shared_marker(username, device_id)
            stored = self.store.settings.get(f"sealed.shared.{username}.{device_id}")
            if marker is not None and stored != marker:
                due.append(device_id)
        return due

    def mark_shared(self, username: str, device_id: int) -> None:
        marker = self._shared_marker(username, device_id)
        if marker is not None:
            self.store.settings.set(f"sealed.shared.{username}.{device_id}", marker)

    def set_peer_profile_key(self, username: str, device_id: int, key: bytes) -> None:
        self.store.settings.set(f"sealed.peer.{username}.{device_id}", key.hex())

    def forget_peer(self, username: str, device_id: int) -> None:
        """The relay refused the delivery token: the contact changed its key, or
        withdrew it. Sends to that device go authenticated until a new one comes,
        and then open a new channel (the refused copies may have opened this one)."""
        self.store.settings.set(f"sealed.peer.{username}.{device_id}", None)
        self.store.sealed_channels.delete_send_channel(username, device_id)

    def peer_access(self, username: str, device_id: int) -> bytes | None:
        stored = self.store.settings.get(f"sealed.peer.{username}.{device_id}")
        return access_key(bytes.fromhex(stored)) if isinstance(stored, str) else None

    # ---- sending -----------------------------------------------------------------
    def _identity(self, encoded: bytes) -> PublicIdentity:
        identity = self._identities.get(encoded)
        if identity is None:
            identity = PublicIdentity.from_bytes(encoded)
            self._identities[encoded] = identity
        return identity

    def seal_items(self, items: Iterable[Addressed]) -> dict[str, tuple[bytes, bytes]]:
        """client id -> (sealed body, delivery token) for the items that can go
        sealed: each copy on its own, over the channel to its device when there is
        a confirmed one, else in a version 1 envelope (with a fresh ephemeral key)
        that opens one. The rest go authenticated."""
        certificate = self.certificate() if self.enabled else None
        if certificate is None:
            return {}
        items = list(items)
        channels = self.store.sealed_channels
        channels.settle_pending()
        # Typing indicators never enter the outbox: they are never retried, and
        # their leaving it would prove nothing.
        queued = {i.client_id for i in self.store.outbox.items([i.client_id for i in items])}
        certificate_digest = sha256(certificate)
        sealed: dict[str, tuple[bytes, bytes]] = {}
        for item in items:
            token = self.peer_access(item.recipient, item.device_id)
            state = self.store.sessions.get(item.recipient, item.device_id)
            if token is None or state is None:
                continue
            try:
                session = Session.from_bytes(state)
                body = self._seal_one(
                    item,
                    session,
                    certificate,
                    certificate_digest,
                    queued=item.client_id in queued,
                )
            except ProtocolError:
                continue
            sealed[item.client_id] = (body, token)
        return sealed

    def _seal_one(
        self,
        item: Addressed,
        session: Session,
        certificate: bytes,
        certificate_digest: bytes,
        *,
        queued: bool,
    ) -> bytes:
        channels = self.store.sealed_channels
        username, device_id = item.recipient, item.device_id
        recipient = self._identity(session.remote_identity)
        prefix = self._session_prefix(username, device_id, session)
        base = b"" if session.pending_prekey is None else session.pending_prekey.ephemeral
        marker = prefix + Writer().bytes16(base).getvalue()
        row = channels.send_channel(username, device_id)
        if row is not None and not self._still_current(row, certificate_digest, prefix, marker):
            channels.delete_send_channel(username, device_id)
            row = None
        if row is not None and row.seed is None:
            return self._seal_on_channel(item, row, queued=queued)
        if len(item.body) > MAX_OPENER_FRAME:
            return seal(recipient, certificate, item.body)
        if row is None:
            if not queued:
                return seal(recipient, certificate, item.body)
            seed = random_bytes(CHANNEL_SEED_LENGTH)
            channel = SendChannel.start(seed, certificate, recipient.to_bytes())
            row = SendChannelRow(
                channel_id(seed), channel.to_bytes(), seed, certificate_digest, marker
            )
            channels.save_send_channel(username, device_id, row)
        assert row.seed is not None
        if queued:
            channels.add_pending(
                item.client_id,
                username,
                device_id,
                row.channel_id,
                opener=True,
                digest=sha256(item.body),
                envelope=None,
                now=self.clock(),
            )
        return seal(recipient, certificate, item.body, channel_seed=row.seed)

    def _seal_on_channel(self, item: Addressed, row: SendChannelRow, *, queued: bool) -> bytes:
        channels = self.store.sealed_channels
        digest = sha256(item.body)
        if queued:
            earlier = channels.pending(item.client_id)
            if earlier is not None and earlier[2] is not None:
                same_channel, same_body = earlier[0] == row.channel_id, earlier[1] == digest
                if same_channel and same_body:
                    # The retry of a copy: the same bytes (its key was used once, on
                    # this very plaintext), never a second index.
                    return earlier[2]
        channel = SendChannel.from_bytes(row.state)
        envelope = channel.seal(item.body)
        if channel.exhausted:
            # The next copy opens a new channel; this one's envelopes still open.
            channels.delete_send_channel(item.recipient, item.device_id)
        else:
            channels.save_send_channel(
                item.recipient,
                item.device_id,
                SendChannelRow(
                    row.channel_id,
                    channel.to_bytes(),
                    None,
                    row.certificate_digest,
                    row.session_marker,
                ),
            )
        if queued:
            channels.add_pending(
                item.client_id,
                item.recipient,
                item.device_id,
                row.channel_id,
                opener=False,
                digest=digest,
                envelope=envelope,
                now=self.clock(),
            )
        return envelope

    def _session_prefix(self, username: str, device_id: int, session: Session) -> bytes:
        """What tells the session a channel was opened on from a later one: the
        peer's identity and the newest archived session of the device (every session
        replaced by a new one, started by either side, or retired by a restore, is
        archived). The marker a channel keeps adds the base key of the session's
        start while it is one we started and the peer has not answered."""
        return (
            Writer()
            .bytes16(session.remote_identity)
            .u64(self.store.sealed_channels.archive_mark(username, device_id))
            .getvalue()
        )

    @staticmethod
    def _still_current(
        row: SendChannelRow, certificate_digest: bytes, prefix: bytes, marker: bytes
    ) -> bool:
        if row.certificate_digest != certificate_digest:
            return False
        if row.session_marker == marker:
            return True
        # A session we started stops carrying its start once the peer answers: the
        # same session still (same identity, nothing archived since), no base key.
        answered = marker == prefix + b"\x00\x00"
        return answered and row.session_marker.startswith(prefix)

    # ---- receiving -----------------------------------------------------------------
    def open(self, body: bytes) -> Unsealed:
        """Opens a sealed envelope: its certificate signed by a pinned relay key and
        unexpired, and naming the identity of the session the inner message belongs
        to. Raises a ProtocolError (IdentityMismatch, ExpiredCertificate,
        CertificateError, SealedSenderError, MalformedMessage) otherwise.

        A channel envelope opens with the keys of its channel, under the certificate
        that opened the channel, with the same identity check; one whose tag is in
        no window raises UnknownChannelTag, and one already opened ChannelReplay."""
        if is_channel_envelope(body):
            return self._open_on_channel(body)
        unsealed = open_sealed(
            self.identity,
            body,
            self.trusted,
            self.clock(),
            cache=self._certificates,
            own_public=self.own_public,
        )
        self._check_identity(unsealed)
        if unsealed.channel_seed is not None:
            # Only now: the channel takes the name of a certificate whose identity
            # is the message's, as a version 1 envelope's would.
            self._accept_channel(unsealed.certificate.to_bytes(), unsealed)
        return unsealed

    def _accept_channel(self, certificate: bytes, unsealed: Unsealed) -> None:
        assert unsealed.channel_seed is not None
        channels = self.store.sealed_channels
        sender = unsealed.certificate
        now = self.clock()
        channels.drop_expired(now)
        seed_id = channel_id(unsealed.channel_seed)
        if channels.has_seed(seed_id):
            return  # announced again before the sender knew it arrived, or replayed
        for kept, row in enumerate(channels.receive_channels(sender.username, sender.device_id)):
            assert row.state is not None
            older = kept >= RECEIVE_CHANNELS_KEPT - 1
            if older or ReceiveChannel.from_bytes(row.state).sender().identity != sender.identity:
                channels.retire_receive_channel(row.id)
        channel = ReceiveChannel.start(
            unsealed.channel_seed, certificate, self.own_public.to_bytes()
        )
        channels.add_receive_channel(
            sender.username,
            sender.device_id,
            seed_id=seed_id,
            expires=sender.expires,
            state=channel.to_bytes(),
            tags=channel.tags(),
            now=now,
        )

    def _open_on_channel(self, body: bytes) -> Unsealed:
        channels = self.store.sealed_channels
        row = channels.by_tag(channel_tag(body))
        if row is None or row.state is None:
            raise UnknownChannelTag("the channel expects no envelope with this tag")
        if self.clock() >= row.expires:
            channels.retire_receive_channel(row.id)
            raise ExpiredCertificate("the certificate of the channel has expired")
        channel = ReceiveChannel.from_bytes(row.state)
        before = channel.tags()
        unsealed = Unsealed(channel.sender(), channel.open(body))
        try:
            self._check_identity(unsealed)
        except IdentityMismatch:
            # The device's session is another identity's now: the channel's
            # certificate names no one who can still send on it.
            channels.retire_receive_channel(row.id)
            raise
        after = channel.tags()
        channels.update_receive_channel(row.id, channel.to_bytes(), before - after, after - before)
        return unsealed

    def drop_channels(self, username: str, device_id: int) -> None:
        """Ends the channels a contact device opened to this one (its session was
        archived: what the channel certified is gone with it)."""
        channels = self.store.sealed_channels
        for row in channels.receive_channels(username, device_id):
            channels.retire_receive_channel(row.id)

    def _listed_identity(self, username: str, device_id: int) -> bytes | None:
        held = self.store.device_lists.get(username)
        contact = self.store.contacts.get(username)
        if held is None or contact is None or contact.identity_key != held.account_key:
            return None
        try:
            listed = open_device_list(held.signed, PublicIdentity.from_bytes(held.account_key))
        except ProtocolError:
            return None
        identity = listed.identity_of(device_id)
        return None if identity is None else identity.to_bytes()

    def _check_identity(self, unsealed: Unsealed) -> None:
        certificate = unsealed.certificate
        kind, payload = decode_frame(unsealed.frame)
        if kind == FRAME_PAIRWISE:
            start = Envelope.from_bytes(payload).prekey
            if start is not None:
                # A session start names its identity itself; the session it
                # starts is that identity's.
                check_identity(certificate, start.identity)
                return
        state = self.store.sessions.get(certificate.username, certificate.device_id)
        if state is not None:
            check_identity(certificate, Session.from_bytes(state).remote_identity)
            return
        listed = self._listed_identity(certificate.username, certificate.device_id)
        if listed is not None:
            # A device of an account with a device list has an identity of its own,
            # the one the list gives it (docs/protocol.md §13).
            check_identity(certificate, listed)
            return
        contact = self.store.contacts.get(certificate.username)
        if contact is not None and contact.identity_key is not None:
            check_identity(certificate, contact.identity_key)
            return
        if kind == FRAME_PAIRWISE:
            raise NoSession("a sealed message from a device we have no session with")
        raise IdentityMismatch("a sealed group message from an identity we cannot check")
