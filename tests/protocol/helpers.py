from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.protocol.identity import DeviceIdentity, LocalPrekeys, RemoteBundle
from app.protocol.session import Session


@dataclass
class Device:
    identity: DeviceIdentity
    prekeys: LocalPrekeys
    sessions: dict[str, Session] = field(default_factory=dict)

    @staticmethod
    def create(batch: int = 3) -> Device:
        identity = DeviceIdentity.generate()
        return Device(identity, LocalPrekeys.generate(batch=batch))

    def fetched_entry(self, *, one_time: bool = True, device_id: int = 1) -> dict[str, Any]:
        """What the relay would hand out for this device (consuming one-time keys)."""
        upload = self.prekeys.upload_json(self.identity)
        entry: dict[str, Any] = {
            "device_id": device_id,
            "identity": upload["identity"],
            "signed_prekey": upload["signed_prekey"],
            "last_resort_kem_prekey": upload["last_resort_kem_prekey"],
            "one_time_prekey": None,
            "one_time_kem_prekey": None,
        }
        if one_time and upload["one_time_prekeys"]:
            entry["one_time_prekey"] = upload["one_time_prekeys"][0]
        if one_time and upload["one_time_kem_prekeys"]:
            entry["one_time_kem_prekey"] = upload["one_time_kem_prekeys"][0]
        return entry

    def bundle(self, **options: Any) -> RemoteBundle:
        return RemoteBundle.from_fetched_device(self.fetched_entry(**options))


def start_pair() -> tuple[Device, Device, Session, Session]:
    """Alice starts with Bob; Bob answers once so both have full ratchets."""
    alice, bob = Device.create(), Device.create()
    alice_session = Session.initiate(alice.identity, bob.bundle())
    first = alice_session.encrypt(b"hello bob")
    bob_session, plaintext, _remote = Session.respond(bob.identity, bob.prekeys, first)
    assert plaintext == b"hello bob"
    assert alice_session.decrypt(bob_session.encrypt(b"hi alice")) == b"hi alice"
    return alice, bob, alice_session, bob_session
