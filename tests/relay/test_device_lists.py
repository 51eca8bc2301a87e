"""Device lists through the relay (issue #19; docs/protocol.md §13, docs/relay-api.md
"Device lists"): published per account, newest version only, served with the
bundle and on their own; the account's other devices told at once; a removed
device's push closed at once and its requests told why."""

from __future__ import annotations

import base64
import json
import ssl
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from app.net import Conflict, NotFound
from app.protocol.device_list import open_device_list, sign_device_list
from app.protocol.identity import DeviceIdentity
from relay.server import DEVICE_REMOVED_CLOSE
from tests.relay.conftest import fresh_database
from tests.relay.helpers import account, client
from tests.support.components import PostgresServer, RelayProcess


def signed_list(owner: DeviceIdentity, version: int, device_ids: tuple[int, ...] = (1,)) -> bytes:
    devices = [(device_id, DeviceIdentity.generate().public) for device_id in device_ids]
    return sign_device_list(owner, version, devices, issued_at=1_800_000_000_000 + version)


def raw(relay: RelayProcess, method: str, path: str, token: str | None, **options: Any) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.request(
        method,
        relay.url + path,
        headers=headers,
        verify=str(relay.ca_file),
        timeout=30,
        **options,
    )


def publish_raw(relay: RelayProcess, token: str | None, value: object) -> Any:
    return raw(relay, "PUT", "/v1/devices/list", token, json={"device_list": value})


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def push(relay: RelayProcess, token: str) -> ClientConnection:
    context = ssl.create_default_context(cafile=str(relay.ca_file))
    return connect(
        relay.url.replace("https://", "wss://") + "/v1/push",
        additional_headers={"Authorization": f"Bearer {token}"},
        ssl=context,
        open_timeout=30,  # generous: a loaded machine is slow to hand shake
    )


def next_frame(connection: ClientConnection, kind: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(connection.recv(timeout=max(0.1, deadline - time.monotonic())))
        if frame["type"] == kind:
            return frame  # type: ignore[no-any-return]


def closed_with(connection: ClientConnection, timeout: float = 10) -> tuple[int | None, str]:
    """The close code and reason the relay sent, waiting at most `timeout`."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            connection.recv(timeout=max(0.1, deadline - time.monotonic()))
    received = closed.value.rcvd
    return (None, "") if received is None else (received.code, received.reason)


def name() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


# ---- publishing and fetching ---------------------------------------------------------


def test_a_published_list_is_served_with_the_bundle_and_on_its_own(
    any_relay: RelayProcess,
) -> None:
    alice_name = name()
    alice = account(any_relay, alice_name, keys=5)
    bob = account(any_relay)
    owner = DeviceIdentity.generate()
    # Nothing published yet: null, not an error.
    assert bob.fetch_device_list(alice_name) is None
    assert bob.fetch_keys(alice_name)["device_list"] is None

    signed = signed_list(owner, 1)
    assert alice.publish_device_list(signed) == 1
    fetched = bob.fetch_device_list(alice_name.upper())  # usernames are case-insensitive
    assert fetched == signed
    assert fetched is not None
    assert open_device_list(fetched, owner.public).version == 1
    answer = raw(any_relay, "GET", f"/v1/users/{alice_name}/device-list", bob.token).json()
    assert answer == {"username": alice_name, "device_list": b64(signed)}
    bundle = bob.fetch_keys(alice_name)
    assert base64.b64decode(bundle["device_list"]) == signed

    # Fetching the list alone hands out no one-time prekeys.
    before = alice.key_status()
    for _ in range(3):
        bob.fetch_device_list(alice_name)
    assert alice.key_status() == before

    with pytest.raises(NotFound):
        bob.fetch_device_list(name())
    missing = raw(any_relay, "GET", f"/v1/users/{name()}/device-list", bob.token)
    assert (missing.status_code, missing.json()) == (404, {"error": "no such user"})
    assert raw(any_relay, "GET", f"/v1/users/{alice_name}/device-list", None).status_code == 401


def test_only_a_newer_version_replaces_the_published_list(any_relay: RelayProcess) -> None:
    alice_name = name()
    alice = account(any_relay, alice_name)
    second = alice.add_device("tablet")  # any active device of the account may publish
    tablet = client(any_relay, token=second["token"])
    owner = DeviceIdentity.generate()
    version_2 = signed_list(owner, 2, (1, 2))
    assert tablet.publish_device_list(version_2) == 2

    for stale in (signed_list(owner, 1), signed_list(owner, 2, (1,))):
        refused = publish_raw(any_relay, alice.token, b64(stale))
        assert refused.status_code == 409
        body = refused.json()
        assert body["code"] == "stale_device_list"
        assert "a device list with this or a newer version is already published" in body["error"]
        with pytest.raises(Conflict):
            alice.publish_device_list(stale)
    assert alice.fetch_device_list(alice_name) == version_2

    # The same list again is a retried publish, not a conflict.
    assert alice.publish_device_list(version_2) == 2
    version_7 = signed_list(owner, 7, (2,))
    assert alice.publish_device_list(version_7) == 7
    assert tablet.fetch_device_list(alice_name) == version_7


def test_malformed_lists_are_refused_with_a_message_never_a_500(any_relay: RelayProcess) -> None:
    alice = account(any_relay)
    good = signed_list(DeviceIdentity.generate(), 1)
    cases: list[tuple[object, int, str]] = [
        ("not base64!", 400, "device_list is not valid base64"),
        ("", 400, "device_list is empty"),
        (b64(b"\x01" + bytes(7)), 400, "too short"),
        (b64(b"\x02" + good[1:]), 400, "format (1)"),
        (b64(b"\x01" + bytes(8) + good[9:]), 400, "version is 1 to"),
        (b64(b"\x01" + (2**63).to_bytes(8, "big") + good[9:]), 400, "version is 1 to"),
        (b64(b"\x01" + bytes(8 * 1024)), 413, "larger than 8192 bytes"),
        (12, 422, "device_list"),
        (None, 422, "device_list"),
    ]
    for value, status, words in cases:
        answer = publish_raw(any_relay, alice.token, value)
        assert answer.status_code == status, (value, answer.text)
        assert words in answer.json()["error"], (value, answer.text)
    missing = raw(any_relay, "PUT", "/v1/devices/list", alice.token, json={})
    assert missing.status_code == 422
    assert "device_list" in missing.json()["error"]
    assert publish_raw(any_relay, None, b64(good)).status_code == 401
    assert publish_raw(any_relay, "not-a-token", b64(good)).status_code == 401
    # Nothing of the refused ones was stored; the good one still goes.
    assert alice.publish_device_list(good) == 1


# ---- telling the other devices -------------------------------------------------------


def test_publishing_tells_the_accounts_other_devices_at_once(any_relay: RelayProcess) -> None:
    alice = account(any_relay)
    tablet_token = str(alice.add_device("tablet")["token"])
    with push(any_relay, tablet_token) as tablet, push(any_relay, str(alice.token)) as laptop:
        assert alice.publish_device_list(signed_list(DeviceIdentity.generate(), 3, (1, 2))) == 3
        assert next_frame(tablet, "device_list") == {"type": "device_list", "version": 3}
        # The publisher knows already; it is sent no notice.
        with pytest.raises(TimeoutError):
            next_frame(laptop, "device_list", timeout=1.5)


# ---- removed devices -----------------------------------------------------------------


def test_a_removed_devices_push_closes_at_once_and_its_requests_say_why(
    any_relay: RelayProcess,
) -> None:
    alice = account(any_relay)
    tablet_token = str(alice.add_device("tablet")["token"])
    with push(any_relay, tablet_token) as tablet:
        tablet.send("hello")  # the relay ignores what a client sends
        removed_at = time.monotonic()
        alice.remove_device(2)
        code, reason = closed_with(tablet)
        assert code == DEVICE_REMOVED_CLOSE == 4410
        assert reason == "this device was removed from the account"
        assert time.monotonic() - removed_at < 5  # not at the next 20 s ping

    answer = raw(any_relay, "GET", "/v1/devices", tablet_token)
    assert answer.status_code == 401
    assert answer.json() == {
        "error": "this device was removed from the account",
        "code": "device_removed",
    }
    unknown = raw(any_relay, "GET", "/v1/devices", "no-such-token")
    assert unknown.status_code == 401
    assert unknown.json() == {"error": "the token is unknown"}
    # Connecting again says the same, as a close code the client can tell apart.
    with push(any_relay, tablet_token) as again:
        assert closed_with(again)[0] == DEVICE_REMOVED_CLOSE
    # The device that stayed is untouched.
    assert [d["device_id"] for d in alice.devices()] == [1]


def test_a_device_revoking_its_own_token_has_its_push_closed_too(relay: RelayProcess) -> None:
    alice = account(relay)
    tablet = client(relay, token=str(alice.add_device("tablet")["token"]))
    with push(relay, str(tablet.token)) as connection:
        tablet.revoke_token()
        assert closed_with(connection)[0] == DEVICE_REMOVED_CLOSE


def test_list_notices_and_removals_cross_relay_instances_on_postgres(
    postgres_server: PostgresServer, relay_factory: Callable[..., RelayProcess]
) -> None:
    database = fresh_database(postgres_server)
    first = relay_factory("first", database_url=database)
    second = relay_factory("second", database_url=database)
    alice_name = name()
    alice = account(first, alice_name)
    tablet_token = str(alice.add_device("tablet")["token"])
    with push(second, tablet_token) as tablet:
        signed = signed_list(DeviceIdentity.generate(), 5, (1, 2))
        alice.publish_device_list(signed)
        assert next_frame(tablet, "device_list") == {"type": "device_list", "version": 5}
        assert client(second, token=tablet_token).fetch_device_list(alice_name) == signed
        alice.remove_device(2)
        assert closed_with(tablet)[0] == DEVICE_REMOVED_CLOSE
