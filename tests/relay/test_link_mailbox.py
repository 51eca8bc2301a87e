"""The link mailbox (issue #19; docs/relay-api.md "Linking a device"): a short-lived,
anonymous store-and-forward box through which a new device and an existing one run
the link protocol. Its id is the capability; it is bounded in every direction, and
once it expires or is closed the relay holds none of its bodies."""

from __future__ import annotations

import base64
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from fastapi.testclient import TestClient

from app.net import NotFound, RateLimited, RelayError
from relay.server import RelaySettings, create_app
from tests.relay.conftest import fresh_database
from tests.relay.helpers import account, client
from tests.support.components import PostgresServer, RelayProcess

LIFETIME_MS = 10 * 60_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw(relay: RelayProcess, method: str, path: str, **options: Any) -> Any:
    return requests.request(
        method, relay.url + path, verify=str(relay.ca_file), timeout=30, **options
    )


def open_raw(relay: RelayProcess, public_key: object) -> Any:
    return raw(relay, "POST", "/v1/provisioning", json={"public_key": public_key})


@pytest.fixture
def app_relay(tmp_path: Path) -> Callable[..., TestClient]:
    """An in-process relay (its clock and limits set by the test) on SQLite."""

    def make(**settings: Any) -> TestClient:
        return TestClient(create_app(RelaySettings(tmp_path / "relay", **settings)))

    return make


# ---- the whole exchange ----------------------------------------------------------------


def test_a_link_runs_through_the_mailbox(any_relay: RelayProcess) -> None:
    # The new device has no account and no token; the existing one has both, and
    # its token is not sent (the relay need not learn which account links).
    new_device = client(any_relay)
    existing = account(any_relay)
    public_key = secrets.token_bytes(32)
    before = int(time.time() * 1000)
    mailbox_id, expires_at = new_device.open_link_mailbox(public_key)
    assert re.fullmatch(r"[A-Z2-7]{8}", mailbox_id)
    assert before + LIFETIME_MS <= expires_at <= int(time.time() * 1000) + LIFETIME_MS

    # Read off a QR code or typed: any case will do.
    assert existing.link_mailbox_key(mailbox_id.lower()) == public_key
    answer = raw(any_relay, "GET", f"/v1/provisioning/{mailbox_id}").json()
    assert answer == {"public_key": b64(public_key), "expires_at": expires_at}

    assert existing.post_link_message(mailbox_id, "existing", b"hello new") == 0
    assert existing.post_link_message(mailbox_id, "existing", b"second") == 1
    assert new_device.post_link_message(mailbox_id, "new", b"hello existing") == 0
    assert new_device.link_messages(mailbox_id, "existing", -1) == [
        (0, b"hello new"),
        (1, b"second"),
    ]
    assert new_device.link_messages(mailbox_id, "existing", 0) == [(1, b"second")]
    assert new_device.link_messages(mailbox_id, "existing", 1) == []
    assert existing.link_messages(mailbox_id, "new", -1) == [(0, b"hello existing")]
    listing = raw(any_relay, "GET", f"/v1/provisioning/{mailbox_id}/messages/existing?after=0")
    assert listing.json() == {"messages": [{"index": 1, "body": b64(b"second")}]}

    closed = raw(any_relay, "DELETE", f"/v1/provisioning/{mailbox_id}")
    assert closed.status_code == 200
    assert closed.json() == {"id": mailbox_id, "closed": True}
    for call in (
        lambda: existing.link_mailbox_key(mailbox_id),
        lambda: new_device.link_messages(mailbox_id, "existing", -1),
        lambda: new_device.post_link_message(mailbox_id, "new", b"late"),
    ):
        with pytest.raises(NotFound, match="no such link request, or it expired"):
            call()
    # Closing it again (the other side) is not an error for the client.
    existing.close_link_mailbox(mailbox_id)
    again = raw(any_relay, "DELETE", f"/v1/provisioning/{mailbox_id}")
    assert again.status_code == 404


# ---- malformed requests ----------------------------------------------------------------


def test_malformed_link_requests_are_refused_with_a_message_never_a_500(
    any_relay: RelayProcess,
) -> None:
    for value, status, words in [
        ("not base64!", 400, "public_key is not valid base64"),
        (b64(bytes(31)), 400, "public_key is 32 bytes"),
        (b64(bytes(33)), 400, "public_key is 32 bytes"),
        ("", 400, "public_key is empty"),
        (32, 422, "public_key"),
    ]:
        answer = open_raw(any_relay, value)
        assert answer.status_code == status, (value, answer.text)
        assert words in answer.json()["error"], (value, answer.text)
    assert raw(any_relay, "POST", "/v1/provisioning", json={}).status_code == 422

    mailbox_id = open_raw(any_relay, b64(bytes(32))).json()["id"]
    unknown = "A" * 8 if mailbox_id != "A" * 8 else "B" * 8
    bad_ids = ["ABC", "ABCDEFG1", "ABCDEFGH9", "ABCDEFGHI", "ABCD-EFG", "x" * 64]
    for bad in bad_ids:
        answer = raw(any_relay, "GET", f"/v1/provisioning/{bad}")
        assert answer.status_code == 400, (bad, answer.text)
        assert "8 characters" in answer.json()["error"]
    too_long = raw(any_relay, "GET", "/v1/provisioning/" + "A" * 65)
    assert too_long.status_code == 422
    for method, path in [
        ("GET", f"/v1/provisioning/{unknown}"),
        ("DELETE", f"/v1/provisioning/{unknown}"),
        ("GET", f"/v1/provisioning/{unknown}/messages/new"),
    ]:
        answer = raw(any_relay, method, path)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json() == {"error": "no such link request, or it expired"}
    posted = raw(
        any_relay, "POST", f"/v1/provisioning/{unknown}/messages/new", json={"body": "AA=="}
    )
    assert posted.status_code == 404

    base = f"/v1/provisioning/{mailbox_id}/messages"
    for role in ("old", "NEW", "", "new/1"):
        answer = raw(any_relay, "GET", f"{base}/{role}")
        assert answer.status_code in {400, 404, 405}, (role, answer.text)
        if answer.status_code == 400:
            assert answer.json() == {"error": "a link mailbox role is 'new' or 'existing'"}
    wrong_role = raw(any_relay, "POST", f"{base}/old", json={"body": "AA=="})
    assert wrong_role.json() == {"error": "a link mailbox role is 'new' or 'existing'"}

    for body, status, words in [
        ("not base64!", 400, "body is not valid base64"),
        ("", 400, "body is empty"),
        (b64(bytes(64 * 1024 + 1)), 413, "body is larger than 65536 bytes"),
        (None, 422, "body"),
    ]:
        answer = raw(any_relay, "POST", f"{base}/new", json={"body": body})
        assert answer.status_code == status, (body, answer.text)
        assert words in answer.json()["error"]
    # Past the route's request limit: refused before it is read.
    huge = raw(any_relay, "POST", f"{base}/new", json={"body": "A" * 200_000})
    assert huge.status_code == 413
    assert huge.json()["code"] == "body_too_large"

    for query, words in [
        ("after=-2", "after"),
        ("after=9223372036854775808", "after"),
        ("after=x", "after"),
        ("wait=26", "wait"),
        ("wait=-1", "wait"),
        ("wait=nan", "wait"),
        ("wait=inf", "wait"),
    ]:
        answer = raw(any_relay, "GET", f"{base}/new?{query}")
        assert answer.status_code == 422, (query, answer.text)
        assert words in answer.json()["error"]
    # None of that left a message behind.
    assert raw(any_relay, "GET", f"{base}/new").json() == {"messages": []}


# ---- limits ----------------------------------------------------------------------------


def _post_paced(side: Any, mailbox_id: str, role: str, body: bytes) -> int:
    """Posts as the link service does: a rate limit is waited out."""
    while True:
        try:
            return int(side.post_link_message(mailbox_id, role, body))
        except RateLimited as limited:
            time.sleep(limited.retry_after)


def test_a_mailbox_holds_at_most_64_messages_per_role(any_relay: RelayProcess) -> None:
    side = client(any_relay)
    mailbox_id, _ = side.open_link_mailbox(bytes(32))
    posted = [_post_paced(side, mailbox_id, "new", bytes([n])) for n in range(64)]
    assert posted == list(range(64))
    refused = raw(
        any_relay, "POST", f"/v1/provisioning/{mailbox_id}/messages/new", json={"body": "AA=="}
    )
    assert refused.status_code == 409
    assert refused.json() == {
        "error": "a link request holds at most 64 messages from each side",
        "code": "link_quota",
    }
    # The other side's count is its own.
    assert side.post_link_message(mailbox_id, "existing", b"x") == 0
    assert len(side.link_messages(mailbox_id, "new", -1)) == 64


def test_a_message_of_the_largest_size_goes_through(relay: RelayProcess) -> None:
    side = client(relay)
    mailbox_id, _ = side.open_link_mailbox(bytes(32))
    largest = secrets.token_bytes(64 * 1024)
    assert side.post_link_message(mailbox_id, "existing", largest) == 0
    assert side.link_messages(mailbox_id, "existing", -1) == [(0, largest)]


def test_open_mailboxes_are_bounded_and_a_closed_one_frees_its_place(
    app_relay: Callable[..., TestClient],
) -> None:
    with app_relay(max_link_mailboxes=3) as http:
        opened = [
            http.post("/v1/provisioning", json={"public_key": b64(bytes(32))}) for _ in range(3)
        ]
        assert [answer.status_code for answer in opened] == [201, 201, 201]
        assert len({answer.json()["id"] for answer in opened}) == 3
        full = http.post("/v1/provisioning", json={"public_key": b64(bytes(32))})
        assert full.status_code == 503
        assert full.json()["code"] == "link_capacity"
        assert "link requests open" in full.json()["error"]
        assert int(full.headers["Retry-After"]) >= 1
        http.delete(f"/v1/provisioning/{opened[0].json()['id']}")
        again = http.post("/v1/provisioning", json={"public_key": b64(bytes(32))})
        assert again.status_code == 201
        text = http.get("/metrics").text
    assert 'relay_quota_refusals_total{kind="link_mailboxes"} 1' in text
    assert "relay_link_mailboxes " in text


def test_an_expired_mailbox_frees_its_place(app_relay: Callable[..., TestClient]) -> None:
    clock = FakeClock()
    with app_relay(max_link_mailboxes=1, clock=clock) as http:
        first = http.post("/v1/provisioning", json={"public_key": b64(bytes(32))})
        assert first.status_code == 201
        assert first.json()["expires_at"] == clock.now + LIFETIME_MS
        refused = http.post("/v1/provisioning", json={"public_key": b64(bytes(32))})
        assert refused.status_code == 503
        clock.now += LIFETIME_MS  # expired, not yet swept: it no longer counts
        assert http.post("/v1/provisioning", json={"public_key": b64(bytes(32))}).is_success


def test_link_requests_are_rate_limited_per_address(app_relay: Callable[..., TestClient]) -> None:
    with app_relay(
        link_open_rate_per_second=0.001,
        link_open_burst=2,
        link_rate_per_second=0.001,
        link_rate_burst=8,
    ) as http:
        opens = [
            http.post("/v1/provisioning", json={"public_key": b64(bytes(32))}).status_code
            for _ in range(3)
        ]
        assert opens == [201, 201, 429]
        mailbox_id = http.post("/v1/provisioning", json={"public_key": b64(bytes(32))})
        assert mailbox_id.status_code == 429
        assert mailbox_id.json()["code"] == "rate_limited"
        assert int(mailbox_id.headers["Retry-After"]) >= 1
        # Every other link request counts against the address's link bucket.
        statuses = [http.get("/v1/provisioning/AAAAAAAA").status_code for _ in range(6)]
        assert statuses[:4] == [404] * 4
        assert statuses[4:] == [429, 429]
        text = http.get("/metrics").text
    assert 'relay_rate_limited_total{kind="link"} 4' in text


def test_the_client_sees_a_rate_limit_with_its_wait(relay: RelayProcess) -> None:
    side = client(relay)
    with pytest.raises(RateLimited) as limited:
        for _ in range(100):
            side.open_link_mailbox(secrets.token_bytes(32))
    assert limited.value.retry_after >= 1


# ---- expiry and deletion leave nothing behind ------------------------------------------


def _database_bytes(data: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(data.glob("relay.sqlite3*")))


def _rows_holding(database: str, marker: bytes) -> int:
    with psycopg.connect(database) as conn:
        row = conn.execute(
            "SELECT (SELECT COUNT(*) FROM link_messages)"
            " + (SELECT COUNT(*) FROM link_messages WHERE position(%s in body) > 0)",
            (marker,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def markers() -> tuple[bytes, bytes]:
    # One small body and one larger than a page (stored on overflow pages).
    return (
        b"MARKER-small-" + uuid.uuid4().hex.encode(),
        b"MARKER-large-" + uuid.uuid4().hex.encode() + secrets.token_bytes(20_000),
    )


@pytest.mark.parametrize("ending", ["expiry", "close"])
def test_no_body_outlives_its_mailbox(
    backend: str | None, tmp_path: Path, ending: str, markers: tuple[bytes, bytes]
) -> None:
    clock = FakeClock()
    data = tmp_path / "relay"
    settings = RelaySettings(data, database_url=backend, clock=clock)
    small, large = markers
    with TestClient(create_app(settings)) as http:
        mailbox_id = http.post("/v1/provisioning", json={"public_key": b64(bytes(32))}).json()["id"]
        for role, body in (("new", small), ("existing", large)):
            posted = http.post(
                f"/v1/provisioning/{mailbox_id}/messages/{role}", json={"body": b64(body)}
            )
            assert posted.status_code == 201
        if backend is None:
            stored = _database_bytes(data)
            assert small in stored
            assert large[:64] in stored
        else:
            assert _rows_holding(backend, small) == 3  # two messages, one holding it
        if ending == "expiry":
            clock.now += LIFETIME_MS - 1
            assert http.get(f"/v1/provisioning/{mailbox_id}").status_code == 200
            clock.now += 1
            gone = http.get(f"/v1/provisioning/{mailbox_id}/messages/new")
            assert gone.status_code == 404
            http.app.state.sweep_links()  # type: ignore[attr-defined]
        else:
            assert http.delete(f"/v1/provisioning/{mailbox_id}").status_code == 200
        http.app.state.scrub()  # type: ignore[attr-defined]
        if backend is None:
            remaining = _database_bytes(data)
            assert small not in remaining
            assert large[:64] not in remaining
            assert large[-64:] not in remaining
        else:
            # PostgreSQL keeps dead tuples until VACUUM (docs/relay-api.md).
            assert _rows_holding(backend, small) == 0
            with psycopg.connect(backend) as conn:
                row = conn.execute("SELECT COUNT(*) FROM link_mailboxes").fetchone()
            assert row == (0,)


def test_a_running_relay_sweeps_expired_mailboxes_within_seconds(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory(extra_args=["--link-mailbox-ms", "1000"])
    side = client(relay)
    marker = b"MARKER-" + uuid.uuid4().hex.encode()
    mailbox_id, _ = side.open_link_mailbox(bytes(32))
    side.post_link_message(mailbox_id, "new", marker)
    assert marker in _database_bytes(relay.data_dir)
    posted = time.monotonic()
    while marker in _database_bytes(relay.data_dir):
        assert time.monotonic() - posted < 20, "an expired link body is still in the files"
        time.sleep(0.25)
    with pytest.raises(NotFound):
        side.link_mailbox_key(mailbox_id)


# ---- long polls ------------------------------------------------------------------------


def _poll_in_background(
    side: Any, mailbox_id: str, role: str, wait: float
) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def poll() -> None:
        started = time.monotonic()
        try:
            outcome["messages"] = side.link_messages(mailbox_id, role, -1, wait=wait)
        except RelayError as error:
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return thread, outcome


def test_a_long_poll_answers_as_soon_as_a_message_arrives(any_relay: RelayProcess) -> None:
    new_device, existing = client(any_relay), client(any_relay)
    mailbox_id, _ = new_device.open_link_mailbox(bytes(32))
    thread, outcome = _poll_in_background(new_device, mailbox_id, "existing", wait=20)
    time.sleep(1.0)
    assert thread.is_alive()  # held: nothing to answer yet
    existing.post_link_message(mailbox_id, "new", b"not what it waits for")
    time.sleep(0.5)
    assert thread.is_alive()
    existing.post_link_message(mailbox_id, "existing", b"the answer")
    thread.join(timeout=10)
    assert outcome["messages"] == [(0, b"the answer")]
    assert outcome["seconds"] < 5

    # With nothing coming, it answers an empty list when its wait is up.
    started = time.monotonic()
    assert new_device.link_messages(mailbox_id, "new", 0, wait=1.5) == []
    assert 1.4 <= time.monotonic() - started < 5
    # A message already there is answered at once.
    started = time.monotonic()
    assert new_device.link_messages(mailbox_id, "existing", -1, wait=20) == [(0, b"the answer")]
    assert time.monotonic() - started < 3


def test_closing_a_mailbox_ends_its_long_polls_with_a_404(relay: RelayProcess) -> None:
    side = client(relay)
    mailbox_id, _ = side.open_link_mailbox(bytes(32))
    thread, outcome = _poll_in_background(client(relay), mailbox_id, "new", wait=20)
    time.sleep(1.0)
    side.close_link_mailbox(mailbox_id)
    thread.join(timeout=10)
    assert isinstance(outcome["error"], NotFound)
    assert outcome["seconds"] < 5


def test_a_long_poll_is_woken_by_a_post_through_another_relay_instance(
    postgres_server: PostgresServer, relay_factory: Callable[..., RelayProcess]
) -> None:
    database = fresh_database(postgres_server)
    first = relay_factory("first", database_url=database)
    second = relay_factory("second", database_url=database)
    mailbox_id, _ = client(first).open_link_mailbox(bytes(32))
    thread, outcome = _poll_in_background(client(second), mailbox_id, "existing", wait=20)
    time.sleep(1.0)
    client(first).post_link_message(mailbox_id, "existing", b"across")
    thread.join(timeout=10)
    assert outcome["messages"] == [(0, b"across")]
    assert outcome["seconds"] < 5
