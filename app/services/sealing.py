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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from app.config import SERVER_CONFIG_NAME, ConfigError, ServerConfig
from app.crypto import CryptoError, VerifyKey, random_bytes
from app.protocol.content import FRAME_PAIRWISE, decode_frame
from app.protocol.errors import NoSession, ProtocolError
from app.protocol.identity import DeviceIdentity, PublicIdentity
from app.protocol.sealed import (
    PROFILE_KEY_LENGTH,
    CertificateCache,
    IdentityMismatch,
    Unsealed,
    access_key,
    check_identity,
    open_sealed,
    seal,
)
from app.protocol.session import Envelope, Session
from app.store import Store

# A certificate is renewed this long before it expires, so one never expires in
# flight between sealing and the recipient's check (the relay keeps mail 30 days,
# so a recipient's check is against the time it was sealed plus this slack).
CERTIFICATE_RENEW_MS = 2 * 3_600_000
PROFILE_KEY = "sealed.profile_key"
REGISTERED = "sealed.registered"
ALLOW_ANYONE = "sealed.allow_anyone"
CERTIFICATE = "sealed.certificate"
CERTIFICATE_EXPIRES = "sealed.certificate_expires"


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
        withdrew it. Sends to that device go authenticated until a new one comes."""
        self.store.settings.set(f"sealed.peer.{username}.{device_id}", None)

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
        sealed; each copy sealed on its own, with a fresh ephemeral key. The rest
        go authenticated."""
        certificate = self.certificate() if self.enabled else None
        if certificate is None:
            return {}
        sealed: dict[str, tuple[bytes, bytes]] = {}
        for item in items:
            token = self.peer_access(item.recipient, item.device_id)
            state = self.store.sessions.get(item.recipient, item.device_id)
            if token is None or state is None:
                continue
            try:
                recipient = self._identity(Session.from_bytes(state).remote_identity)
                sealed[item.client_id] = (seal(recipient, certificate, item.body), token)
            except ProtocolError:
                continue
        return sealed

    # ---- receiving -----------------------------------------------------------------
    def open(self, body: bytes) -> Unsealed:
        """Opens a sealed envelope: its certificate signed by a pinned relay key and
        unexpired, and naming the identity of the session the inner message belongs
        to. Raises a ProtocolError (IdentityMismatch, ExpiredCertificate,
        CertificateError, SealedSenderError, MalformedMessage) otherwise."""
        unsealed = open_sealed(
            self.identity,
            body,
            self.trusted,
            self.clock(),
            cache=self._certificates,
            own_public=self.own_public,
        )
        self._check_identity(unsealed)
        return unsealed

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
        contact = self.store.contacts.get(certificate.username)
        if contact is not None and contact.identity_key is not None:
            check_identity(certificate, contact.identity_key)
            return
        if kind == FRAME_PAIRWISE:
            raise NoSession("a sealed message from a device we have no session with")
        raise IdentityMismatch("a sealed group message from an identity we cannot check")
