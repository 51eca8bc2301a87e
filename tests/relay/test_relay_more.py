"""Expiry, rate limits, the vault pass-through, and delivery across relay crashes."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.net import OutgoingEnvelope, RelayUnavailable
from relay.server import DAY_MS, RelaySettings, create_app
from tests.relay.helpers import account, client
from tests.support.components import RelayProcess
from tests.support.processes import free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


def _register(http: TestClient, name: str) -> dict[str, str]:
    token = http.post("/v1/accounts", json={"username": name, "device_name": "d"}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_undelivered_envelopes_expire_after_30_days(tmp_path: Path) -> None:
    clock = FakeClock()
    with TestClient(create_app(RelaySettings(tmp_path, clock=clock))) as http:
        alice, bob = _register(http, "alice"), _register(http, "bob")
        body = {"messages": [{"id": "old", "recipient": "bob", "device_id": 1, "body": "AAAA"}]}
        assert http.post("/v1/messages", json=body, headers=alice).status_code == 200
        clock.now += 29 * DAY_MS
        assert len(http.get("/v1/messages", headers=bob).json()["envelopes"]) == 1
        clock.now += 2 * DAY_MS
        assert http.get("/v1/messages", headers=bob).json()["envelopes"] == []
        http.app.state.purge()  # type: ignore[attr-defined]
        rows = http.app.state.storage.pending(2, 1, 0, 10, 0)  # type: ignore[attr-defined]
        assert rows == []


def test_rate_limit_answers_429_with_retry_after_and_spares_others(tmp_path: Path) -> None:
    settings = RelaySettings(tmp_path, rate_per_second=5, rate_burst=20)
    with TestClient(create_app(settings)) as http:
        noisy = _register(http, "noisy")
        statuses = [http.get("/v1/devices", headers=noisy).status_code for _ in range(60)]
        assert statuses.count(429) > 0
        limited = next(
            r
            for r in (http.get("/v1/devices", headers=noisy) for _ in range(5))
            if r.status_code == 429
        )
        assert int(limited.headers["Retry-After"]) >= 1
        assert "slow down" in limited.json()["error"]
        # Others behind the same address are not held back by the noisy one.
        quiet = _register(http, "quiet")
        assert [http.get("/v1/devices", headers=quiet).status_code for _ in range(15)] == [200] * 15


def test_a_thousand_request_burst_is_limited_and_others_keep_working(tmp_path: Path) -> None:
    with TestClient(create_app(RelaySettings(tmp_path))) as http:
        noisy, quiet = _register(http, "noisy"), _register(http, "quiet")
        statuses = []
        for number in range(1000):
            statuses.append(http.get("/v1/devices", headers=noisy).status_code)
            if number % 50 == 0:
                assert http.get("/v1/devices", headers=quiet).status_code == 200
        assert statuses[:200] == [200] * 200
        assert statuses.count(429) >= 500


def test_a_full_mailbox_is_refused_per_recipient_and_the_others_are_queued(
    tmp_path: Path,
) -> None:
    with TestClient(create_app(RelaySettings(tmp_path, mailbox_quota=3))) as http:
        alice, _bob = _register(http, "alice"), _register(http, "bob")
        _register(http, "carol")
        for number in range(3):
            body = {
                "messages": [
                    {"id": f"m{number}", "recipient": "bob", "device_id": 1, "body": "AA=="}
                ]
            }
            assert http.post("/v1/messages", json=body, headers=alice).status_code == 200
        body = {
            "messages": [
                {"id": "over", "recipient": "bob", "device_id": 1, "body": "AA=="},
                {"id": "fine", "recipient": "carol", "device_id": 1, "body": "AA=="},
                {"id": "m0", "recipient": "bob", "device_id": 1, "body": "AA=="},
            ]
        }
        response = http.post("/v1/messages", json=body, headers=alice)
        assert response.status_code == 200
        results = {r["id"]: r for r in response.json()["results"]}
        assert results["over"]["status"] == "mailbox_full"
        assert results["over"]["retry_after"] > 0
        assert results["fine"]["status"] == "queued"
        assert results["m0"]["status"] == "duplicate"  # a retry of a queued one


class _Upstream(http.server.ThreadingHTTPServer):
    seen: list[bytes]


def _upstream(status: int) -> Iterator[_Upstream]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            payload = self.rfile.read(length)
            server.seen.append(payload)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(b"answer:" + payload)

        def log_message(self, *args: object) -> None:
            pass

    server = _Upstream(("127.0.0.1", 0), Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture
def failing_upstream() -> Iterator[_Upstream]:
    yield from _upstream(503)


@pytest.fixture
def working_upstream() -> Iterator[_Upstream]:
    yield from _upstream(200)


def test_vault_pass_through_fails_over_and_forwards_verbatim(
    relay_factory: Callable[..., RelayProcess],
    failing_upstream: _Upstream,
    working_upstream: _Upstream,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    failing = f"http://127.0.0.1:{failing_upstream.server_address[1]}"
    working = f"http://127.0.0.1:{working_upstream.server_address[1]}"
    relay = relay_factory(extra_args=["--vault", dead, "--vault", failing, "--vault", working])
    payload = b"\x00opaque hpke bytes\xff" * 10
    status, body = client(relay).vault_call("login_start", payload)
    assert status == 200
    assert body == b"answer:" + payload
    assert failing_upstream.seen == [payload]
    assert working_upstream.seen == [payload]
    log = (relay.data_dir / "relay.log").read_text()
    assert "opaque hpke" not in log
    only_dead = relay_factory("dead-only", extra_args=["--vault", dead])
    status, body = client(only_dead).vault_call("login_start", payload)
    assert status == 503
    assert b"no backup vault node" in body


@pytest.mark.slow
def test_thousand_messages_survive_two_relay_crashes(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory()
    alice = account(relay, "alice")
    bob = account(relay, "bob")
    sent: list[str] = []
    total = 1000

    def send_with_retry(batch: list[OutgoingEnvelope]) -> None:
        while True:
            try:
                statuses = alice.send(batch)
            except RelayUnavailable:
                time.sleep(0.2)
                continue
            assert set(statuses.values()) <= {"queued", "duplicate"}
            return

    for start in range(0, total, 50):
        batch = [
            OutgoingEnvelope(f"msg-{n:04d}", "bob", 1, f"cipher {n}".encode())
            for n in range(start, start + 50)
        ]
        if start in (300, 700):
            assert relay.process is not None
            relay.kill()
            relay.start()
        send_with_retry(batch)
        sent.extend(e.client_id for e in batch)
    received: dict[str, bytes] = {}
    after = 0
    while True:
        envelopes = bob.fetch(after=after, limit=500)
        if not envelopes:
            break
        for envelope in envelopes:
            received.setdefault(envelope.client_id, envelope.body)
        after = envelopes[-1].seq
        bob.ack([e.seq for e in envelopes])
    assert sorted(received) == sorted(sent)
    assert all(received[f"msg-{n:04d}"] == f"cipher {n}".encode() for n in range(total))
    assert bob.fetch() == []
