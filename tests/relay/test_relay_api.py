"""The relay over real HTTPS, on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from websockets.sync.client import connect

from app.net import AuthError, Conflict, NotFound, OutgoingEnvelope, RelayClient, RelayError
from app.protocol.identity import RemoteBundle
from tests.relay.helpers import account, client
from tests.support.components import RelayProcess

_names: dict[str, str] = {}


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _register(relay: RelayProcess, name: str, keys: int = 0) -> RelayClient:
    user = account(relay, name, keys=keys)
    assert user.token
    _names[user.token] = name
    return user


def test_accounts_are_unique_case_insensitively(any_relay: RelayProcess) -> None:
    alice = client(any_relay)
    assert alice.register("Alice.Example", "laptop")["username"] == "alice.example"
    with pytest.raises(Conflict, match="taken"):
        client(any_relay).register("ALICE.example", "phone")
    for bad in ("ab", "no spaces", "x" * 40, "émoji"):
        with pytest.raises(RelayError) as error:
            client(any_relay).register(bad, "phone")
        assert error.value.status == 400


def test_requests_need_a_valid_token_and_revocation_works(any_relay: RelayProcess) -> None:
    anonymous = client(any_relay)
    with pytest.raises(AuthError):
        anonymous.devices()
    forged = client(any_relay, token="not-a-real-token")
    with pytest.raises(AuthError):
        forged.devices()
    alice = _register(any_relay, "alice")
    second = alice.add_device("phone")
    phone = client(any_relay, token=second["token"])
    assert [d["device_id"] for d in phone.devices()] == [1, 2]
    alice.remove_device(2)
    with pytest.raises(AuthError):
        phone.devices()
    alice.revoke_token()
    with pytest.raises(AuthError):
        alice.devices()


def test_prekeys_are_handed_out_once_then_last_resort(any_relay: RelayProcess) -> None:
    _register(any_relay, "bob", keys=2)
    alice = _register(any_relay, "alice")
    seen = set()
    for _ in range(2):
        device = alice.fetch_keys("bob")["devices"][0]
        bundle = RemoteBundle.from_fetched_device(device)
        assert not bundle.kem_is_last_resort
        seen.add(bundle.one_time_prekey_id)
    assert len(seen) == 2
    exhausted = RemoteBundle.from_fetched_device(alice.fetch_keys("bob")["devices"][0])
    assert exhausted.one_time_prekey is None
    assert exhausted.kem_is_last_resort
    with pytest.raises(NotFound):
        alice.fetch_keys("nobody-here")


def test_identity_cannot_be_replaced(any_relay: RelayProcess) -> None:
    from app.protocol.identity import DeviceIdentity, LocalPrekeys

    bob = _register(any_relay, "bob", keys=1)
    status = bob.key_status()
    assert status["low"] is True
    other = LocalPrekeys.generate(batch=1).upload_json(DeviceIdentity.generate())
    with pytest.raises(Conflict):
        bob.upload_keys(other)


def test_concurrent_fetches_never_share_a_one_time_key(any_relay: RelayProcess) -> None:
    _register(any_relay, "bob", keys=30)
    fetchers = [_register(any_relay, f"fetcher{i}") for i in range(6)]

    def fetch(index: int) -> int | None:
        device = fetchers[index % len(fetchers)].fetch_keys("bob")["devices"][0]
        return RemoteBundle.from_fetched_device(device).one_time_prekey_id

    with ThreadPoolExecutor(max_workers=12) as pool:
        ids = [i for i in pool.map(fetch, range(30)) if i is not None]
    assert len(ids) == 30
    assert len(set(ids)) == 30


def test_send_fan_out_idempotent_fetch_and_ack(any_relay: RelayProcess) -> None:
    alice = _register(any_relay, "alice")
    bob = _register(any_relay, "bob")
    bob_phone = client(any_relay, token=bob.add_device("phone")["token"])
    envelopes = [
        OutgoingEnvelope("m1", "bob", 1, b"cipher-1"),
        OutgoingEnvelope("m1", "bob", 2, b"cipher-1b"),
        OutgoingEnvelope("m2", "bob", 1, b"cipher-2"),
        OutgoingEnvelope("m3", "nobody-x", 1, b"cipher-3"),
    ]
    assert alice.send(envelopes) == {"m1": "queued", "m2": "queued", "m3": "unknown_recipient"}
    assert alice.send(envelopes[:1])["m1"] == "duplicate"
    laptop = bob.fetch()
    assert [(e.client_id, e.body, e.sender, e.sender_device) for e in laptop] == [
        ("m1", b"cipher-1", "alice", 1),
        ("m2", b"cipher-2", "alice", 1),
    ]
    assert [e.body for e in bob_phone.fetch()] == [b"cipher-1b"]
    assert bob.fetch(after=laptop[0].seq)[0].client_id == "m2"
    bob.ack([laptop[0].seq])
    assert [e.client_id for e in bob.fetch()] == ["m2"]
    # Alice cannot read or acknowledge Bob's mailbox.
    assert alice.fetch() == []
    alice.ack([laptop[1].seq])
    assert [e.client_id for e in bob.fetch()] == ["m2"]


def test_push_delivers_live_and_catches_up(any_relay: RelayProcess) -> None:
    alice = _register(any_relay, "alice")
    bob = _register(any_relay, "bob")
    alice.send([OutgoingEnvelope("before", "bob", 1, b"queued while offline")])
    context = ssl.create_default_context(cafile=str(any_relay.ca_file))
    with connect(
        bob.push_url(), additional_headers=_bearer(bob.token), ssl=context, open_timeout=10
    ) as connection:
        first = json.loads(connection.recv(timeout=10))
        assert first["type"] == "envelope"
        assert first["id"] == "before"
        alice.send([OutgoingEnvelope("live", "bob", 1, b"pushed")])
        frame = json.loads(connection.recv(timeout=10))
        while frame["type"] != "envelope":
            frame = json.loads(connection.recv(timeout=10))
        assert frame["id"] == "live"
        assert base64.b64decode(frame["body"]) == b"pushed"
    for url, headers in (
        (bob.push_url(), _bearer("wrong")),
        (bob.push_url(), {}),
        # The right token in the URL is refused too: URLs end up in logs.
        (bob.push_url() + f"?token={bob.token}", {}),
    ):
        with (
            pytest.raises(Exception, match=r"4401|4400|rejected|401"),
            connect(url, additional_headers=headers, ssl=context, open_timeout=10) as bad,
        ):
            bad.recv(timeout=5)


def test_a_closed_push_connection_is_let_go_at_once(any_relay: RelayProcess) -> None:
    """Not at the next ping up to 20 s later: until then the handler held its memory
    and subscription, and a relay stopping waited for it."""
    bob = _register(any_relay, "bob")
    context = ssl.create_default_context(cafile=str(any_relay.ca_file))

    def open_pushes() -> float:
        text = requests.get(f"{any_relay.url}/metrics", verify=str(any_relay.ca_file)).text
        for line in text.splitlines():
            if line.startswith("relay_push_connections "):
                return float(line.split()[1])
        return 0.0

    with connect(
        bob.push_url(), additional_headers=_bearer(bob.token), ssl=context, open_timeout=10
    ):
        deadline = time.monotonic() + 5
        while open_pushes() != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_pushes() == 1
    deadline = time.monotonic() + 3
    while open_pushes() != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_pushes() == 0


def test_push_says_when_the_prekey_stock_runs_low(any_relay: RelayProcess) -> None:
    bob = _register(any_relay, "bob", keys=12)
    alice = _register(any_relay, "alice")
    context = ssl.create_default_context(cafile=str(any_relay.ca_file))
    with connect(
        bob.push_url(), additional_headers=_bearer(bob.token), ssl=context, open_timeout=10
    ) as push:
        alice.send([OutgoingEnvelope("hello", "bob", 1, b"first")])
        assert json.loads(push.recv(timeout=10))["id"] == "hello"  # stock of 12: no warning
        for _ in range(3):
            alice.fetch_keys("bob")
        frame = json.loads(push.recv(timeout=10))
        assert frame == {"type": "keys_low"}


def test_bad_input_gets_a_4xx_with_a_sentence(any_relay: RelayProcess) -> None:
    alice = _register(any_relay, "alice")
    session = requests.Session()
    headers = {"Authorization": f"Bearer {alice.token}"}
    verify = str(any_relay.ca_file)
    cases = [
        (
            "POST",
            "/v1/accounts",
            {"data": "{not json", "headers": {"Content-Type": "application/json"}},
        ),
        ("POST", "/v1/accounts", {"json": {"username": 5}}),
        ("POST", "/v1/messages", {"json": {"messages": []}, "headers": headers}),
        (
            "POST",
            "/v1/messages",
            {
                "json": {
                    "messages": [
                        {"id": "bad id!", "recipient": "alice", "device_id": 1, "body": "AA=="}
                    ]
                },
                "headers": headers,
            },
        ),
        (
            "POST",
            "/v1/messages",
            {
                "json": {
                    "messages": [{"id": "x", "recipient": "alice", "device_id": 1, "body": "***"}]
                },
                "headers": headers,
            },
        ),
        ("PUT", "/v1/keys", {"json": {"identity": "%%%"}, "headers": headers}),
        ("GET", "/v1/messages?after=-4", {"headers": headers}),
        ("GET", "/v1/attachments/not-an-id", {"headers": headers}),
        ("POST", "/v1/vault/Bad-Op", {"data": b"x"}),
        ("DELETE", "/v1/devices/99", {"headers": headers}),
        ("GET", "/v1/nothing-here", {}),
    ]
    for method, path, options in cases:
        response = session.request(
            method, any_relay.url + path, verify=verify, timeout=10, **options
        )  # type: ignore[arg-type]
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        error = response.json()["error"]
        assert isinstance(error, str)
        assert len(error) > 5


def test_attachments_stream_and_respect_the_limit(relay_factory: object, tmp_path: object) -> None:
    relay = relay_factory(extra_args=["--max-attachment-bytes", "300000"])  # type: ignore[operator]
    alice = _register(relay, "alice")
    bob = _register(relay, "bob")
    import io

    blob = bytes(range(256)) * 1000
    blob_id = alice.upload_attachment(io.BytesIO(blob))
    out = io.BytesIO()
    assert bob.download_attachment(blob_id, out) == len(blob)
    assert out.getvalue() == blob
    with pytest.raises(RelayError) as error:
        alice.upload_attachment(io.BytesIO(bytes(400_000)))
    assert error.value.status == 413
    with pytest.raises(NotFound):
        bob.download_attachment("0" * 32, io.BytesIO())
    anonymous = client(relay)
    with pytest.raises(AuthError):
        anonymous.download_attachment(blob_id, io.BytesIO())


def test_metrics_and_logs_hold_no_secrets(any_relay: RelayProcess) -> None:
    alice = _register(any_relay, "alice")
    _register(any_relay, "bob")
    secret_body = b"\x00ciphertext-looking-payload\x01" + uuid.uuid4().bytes
    alice.send([OutgoingEnvelope("m-secret", "bob", 1, secret_body)])
    metrics = requests.get(
        any_relay.url + "/metrics", verify=str(any_relay.ca_file), timeout=5
    ).text
    assert "relay_requests_total" in metrics
    assert 'route="/v1/messages"' in metrics
    assert "bob" not in metrics
    log = (any_relay.data_dir / "relay.log").read_text()
    assert alice.token is not None
    assert alice.token not in log
    assert base64.b64encode(secret_body).decode() not in log
    assert '"route":"/v1/messages"' in log


def test_two_relays_on_one_postgres_share_users_and_push(
    postgres_server: object, relay_factory: object
) -> None:
    from tests.relay.conftest import fresh_database

    dsn = fresh_database(postgres_server)  # type: ignore[arg-type]
    first = relay_factory("one", database_url=dsn)  # type: ignore[operator]
    second = relay_factory("two", database_url=dsn)  # type: ignore[operator]
    alice = _register(first, "alice")
    bob_on_second = _register(second, "bob")
    context = ssl.create_default_context(cafile=str(second.ca_file))
    received: list[str] = []
    ready = threading.Event()
    with connect(
        bob_on_second.push_url(),
        additional_headers=_bearer(bob_on_second.token),
        ssl=context,
        open_timeout=10,
    ) as connection:
        ready.set()
        alice.send([OutgoingEnvelope("cross", "bob", 1, b"via instance one")])
        while not received:
            frame = json.loads(connection.recv(timeout=10))
            if frame["type"] == "envelope":
                received.append(frame["id"])
    assert received == ["cross"]


def test_concurrent_sends_through_two_relays_are_all_pushed_in_order(
    postgres_server: object, relay_factory: object
) -> None:
    """On PostgreSQL a seq is drawn at insert, not at commit: a send that drew a lower
    seq but committed later was skipped by a push connection already past it."""
    from tests.relay.conftest import fresh_database

    dsn = fresh_database(postgres_server)  # type: ignore[arg-type]
    relays = [
        relay_factory("one", database_url=dsn),  # type: ignore[operator]
        relay_factory("two", database_url=dsn),  # type: ignore[operator]
    ]
    bob = _register(relays[1], "bob")
    senders = [_register(relays[number % 2], f"sender{number}") for number in range(8)]
    per_sender = 60
    expected = {f"s{n}-{i}" for n in range(len(senders)) for i in range(per_sender)}
    context = ssl.create_default_context(cafile=str(relays[1].ca_file))
    pushed: list[tuple[int, str]] = []

    def send_all(number: int) -> None:
        for index in range(per_sender):
            senders[number].send([OutgoingEnvelope(f"s{number}-{index}", "bob", 1, b"x" * 64)])

    with connect(
        bob.push_url(), additional_headers=_bearer(bob.token), ssl=context, open_timeout=10
    ) as connection:
        with ThreadPoolExecutor(len(senders)) as pool:
            for future in [pool.submit(send_all, n) for n in range(len(senders))]:
                future.result()
        with pytest.raises(TimeoutError):
            while True:  # until nothing more arrives for 3 s
                frame = json.loads(connection.recv(timeout=3))
                if frame["type"] == "envelope":
                    pushed.append((frame["seq"], frame["id"]))
    assert len(bob.fetch(limit=1000)) == len(expected)
    assert {client_id for _, client_id in pushed} == expected
    seqs = [seq for seq, _ in pushed]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_one_account_cannot_touch_another_accounts_devices_or_keys(relay: RelayProcess) -> None:
    alice = _register(relay, "alice", keys=3)
    mallory = _register(relay, "mallory", keys=3)
    bob_phone = alice.add_device("phone")
    # Device ids are per account: mallory's "device 2" is not alice's phone.
    with pytest.raises(NotFound):
        mallory.remove_device(2)
    assert [d["device_id"] for d in client(relay, token=bob_phone["token"]).devices()] == [1, 2]
    # Uploads only ever touch the caller's own bundle, whose identity is fixed.
    before = mallory.fetch_keys("alice")
    from app.protocol.identity import DeviceIdentity, LocalPrekeys

    with pytest.raises(Conflict):
        mallory.upload_keys(LocalPrekeys.generate(batch=2).upload_json(DeviceIdentity.generate()))
    after = mallory.fetch_keys("alice")
    assert before["devices"][0]["identity"] == after["devices"][0]["identity"]
