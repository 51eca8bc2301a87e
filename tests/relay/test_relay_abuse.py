"""The relay under abuse (issue #21): bodies limited while they are read, every integer
bounded, quotas per account and device, one-time prekeys that cannot be drained,
owner-only files, acknowledged bodies scrubbed from the database files, and the
metrics that show all of it to an operator."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import sqlite3
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from fastapi.testclient import TestClient
from websockets.sync.client import connect

from app.protocol.identity import DeviceIdentity, LocalPrekeys, RemoteBundle
from app.protocol.session import Session
from relay.cli import QUOTA_FLAGS, build_parser, quota_settings
from relay.server import HOUR_MS, RelaySettings, create_app
from relay.storage import MailboxQuota, NewEnvelope, QuotaExceeded, open_storage
from tests.support.components import RelayProcess

MiB = 1024 * 1024


# ---- helpers ---------------------------------------------------------------------


@dataclass
class Api:
    """Raw HTTPS calls to a relay process, as any client (or attacker) could make."""

    relay: RelayProcess
    token: str | None = None
    username: str = ""
    session: requests.Session = field(default_factory=requests.Session)

    def call(self, method: str, path: str, **options: Any) -> requests.Response:
        headers = dict(options.pop("headers", {}))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return self.session.request(
            method,
            self.relay.url + path,
            headers=headers,
            verify=str(self.relay.ca_file),
            timeout=options.pop("timeout", 30),
            **options,
        )


def register(relay: RelayProcess, name: str | None = None) -> Api:
    username = name or f"u{uuid.uuid4().hex[:12]}"
    response = Api(relay).call(
        "POST", "/v1/accounts", json={"username": username, "device_name": "laptop"}
    )
    assert response.status_code == 201, response.text
    return Api(relay, response.json()["token"], username)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def random_keys(count: int, first_id: int) -> list[dict[str, Any]]:
    return [{"id": first_id + n, "key": b64(secrets.token_bytes(32))} for n in range(count)]


def send(api: Api, *messages: tuple[str, str, int, bytes]) -> dict[str, dict[str, Any]]:
    body = {
        "messages": [
            {"id": cid, "recipient": to, "device_id": device, "body": b64(payload)}
            for cid, to, device, payload in messages
        ]
    }
    response = api.call("POST", "/v1/messages", json=body)
    assert response.status_code == 200, response.text
    return {result["id"]: result for result in response.json()["results"]}


def refusal(response: requests.Response, status: int, code: str | None = None) -> str:
    """The error sentence of a refusal with this status (and code)."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert isinstance(body["error"], str)
    assert len(body["error"]) > 10
    if code is not None:
        assert body["code"] == code, body
    return str(body["error"])


def high_water_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


class ChunkedBody:
    """`size` bytes made while they are sent, never held at once; `produced` says how
    many the client was made to send. Without a length, requests sends it chunked."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.produced = 0

    def __iter__(self) -> Iterator[bytes]:
        chunk = b"x" * (256 * 1024)
        while self.produced < self.size:
            piece = chunk[: self.size - self.produced]
            self.produced += len(piece)
            yield piece


class DeclaredBody(ChunkedBody):
    """The same with a length, which requests sends as Content-Length."""

    def __len__(self) -> int:
        return self.size


def metric_samples(relay_url: str, verify: str | bool) -> dict[str, float]:
    text = requests.get(relay_url + "/metrics", verify=verify, timeout=10).text
    return parse_exposition(text)


def parse_exposition(text: str) -> dict[str, float]:
    """Prometheus text format 0.0.4, strictly: every sample's family declared by a
    TYPE line before it, once; counters named *_total; label values quoted."""
    sample = re.compile(
        r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})?'
        r" (-?[0-9.e+]+|\+Inf|NaN)$"
    )
    types: dict[str, str] = {}
    values: dict[str, float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"{name} declared twice"
            assert kind in {"counter", "gauge", "histogram"}, line
            if kind == "counter":
                assert name.endswith("_total"), name
            types[name] = kind
            continue
        match = sample.match(line)
        assert match, f"not a sample line: {line!r}"
        name = match.group(1)
        family = re.sub(r"_(bucket|count|sum)$", "", name) if name not in types else name
        assert family in types, f"{name} has no TYPE line before it"
        values[name + (match.group(2) or "")] = float(match.group(3))
    return values


# ---- fixtures --------------------------------------------------------------------

# Small enough to reach in a test; each is also a `serve` flag under test.
TIGHT = [
    "--max-devices",
    "3",
    "--max-one-time-prekeys",
    "60",
    "--mailbox-max-bytes",
    "300000",
    "--max-attachment-bytes",
    "100000",
    "--attachment-bytes-per-day",
    "250000",
    "--prekey-fetches-per-requester",
    "3",
    "--prekey-handouts-per-account",
    "5",
]


@pytest.fixture
def tight_relay(backend: str | None, relay_factory: Callable[..., RelayProcess]) -> RelayProcess:
    return relay_factory(database_url=backend, extra_args=TIGHT)


# ---- 1. bodies are limited while they are read -------------------------------------


def test_a_200_mb_post_is_refused_413_and_the_relay_memory_stays_bounded(
    relay: RelayProcess,
) -> None:
    assert relay.process is not None
    pid = relay.process.pid
    alice = register(relay)
    anonymous, forged = Api(relay), Api(relay, token="not-a-real-token")
    json_type = {"Content-Type": "application/json"}
    # Warm-up: every route below has answered once, so what follows measures bodies.
    for api, path in ((anonymous, "/v1/accounts"), (anonymous, "/v1/vault/login_start")):
        api.call("POST", path, data=b"{}", headers=json_type)
    alice.call("POST", "/v1/messages", json={"messages": []})
    size = 200 * MiB

    def peak_growth_mib(attempts: list[tuple[Api, str, ChunkedBody]]) -> float:
        before = high_water_kib(pid)
        for api, route, body in attempts:
            method, path = route.split(" ")
            response = api.call(method, path, data=body, headers=json_type)
            assert "limited to" in refusal(response, 413, "body_too_large")
        return (high_water_kib(pid) - before) / 1024

    # Without a valid token nothing is held beyond the 64 KiB of a JSON route.
    growth = peak_growth_mib(
        [
            (anonymous, "POST /v1/accounts", DeclaredBody(size)),
            (anonymous, "POST /v1/accounts", ChunkedBody(size)),
            (anonymous, "POST /v1/vault/login_start", ChunkedBody(size)),
            (anonymous, "POST /v1/messages", ChunkedBody(size)),
            (forged, "POST /v1/messages", DeclaredBody(size)),
            (forged, "PUT /v1/keys", ChunkedBody(size)),
        ]
    )
    assert growth < 8, f"peak RSS grew {growth:.1f} MiB"
    # An account's send may hold its 16 MiB limit (twice while it is joined).
    growth = peak_growth_mib(
        [
            (alice, "POST /v1/messages", ChunkedBody(size)),
            (alice, "POST /v1/messages", DeclaredBody(size)),
            (alice, "POST /v1/messages/ack", DeclaredBody(size)),
        ]
    )
    assert growth < 48, f"peak RSS grew {growth:.1f} MiB"
    # And the relay still serves.
    assert register(relay).token


def _raw_post(relay: RelayProcess, path: str, headers: str, sent: bytes) -> tuple[int, str]:
    """Sends a request's head and only `sent` of its body, then reads the answer:
    one that comes proves the relay did not wait for the rest."""
    context = ssl.create_default_context(cafile=str(relay.ca_file))
    with (
        socket.create_connection(("127.0.0.1", relay.port), timeout=10) as plain,
        context.wrap_socket(plain, server_hostname="localhost") as tls,
    ):
        tls.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n".encode() + sent)
        received = b""
        while True:
            data = tls.recv(65536)
            if not data:
                break
            received += data
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert "connection: close" in [line.lower() for line in lines], lines
    return int(lines[0].split(" ")[1]), json.loads(body)["code"]


def test_the_413_comes_before_the_rest_of_the_body(relay: RelayProcess) -> None:
    declared = "Content-Type: application/json\r\nContent-Length: 209715200\r\n"
    assert _raw_post(relay, "/v1/accounts", declared, b"") == (413, "body_too_large")
    chunk = b"x" * 65536
    one_mib = b"".join(b"10000\r\n" + chunk + b"\r\n" for _ in range(16))
    chunked = "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    for path in ("/v1/accounts", "/v1/vault/login_start"):
        assert _raw_post(relay, path, chunked, one_mib) == (413, "body_too_large")


def test_a_body_crossing_its_limit_mid_stream_is_refused_and_smaller_ones_pass(
    relay: RelayProcess,
) -> None:
    anonymous = Api(relay)
    # 70 KiB of JSON, chunked: over the 64 KiB limit only once most of it has arrived.
    padded = json.dumps({"username": "x" * 3, "device_name": "d" * (70 * 1024)}).encode()
    response = anonymous.call(
        "POST",
        "/v1/accounts",
        data=iter([padded[:40_000], padded[40_000:]]),
        headers={"Content-Type": "application/json"},
    )
    refusal(response, 413, "body_too_large")
    # Under the limit the route answers for itself (here: the name is too long).
    small = json.dumps({"username": "abc", "device_name": "d" * 1000}).encode()
    response = anonymous.call(
        "POST", "/v1/accounts", data=iter([small]), headers={"Content-Type": "application/json"}
    )
    refusal(response, 422)
    samples = metric_samples(relay.url, str(relay.ca_file))
    assert samples['relay_body_too_large_total{route="/v1/accounts"}'] == 1


def test_attachments_keep_their_own_larger_limit(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory(extra_args=["--max-attachment-bytes", "300000"])
    alice = register(relay)
    headers = {"Content-Type": "application/octet-stream"}
    stored = alice.call("POST", "/v1/attachments", data=ChunkedBody(250_000), headers=headers)
    assert stored.status_code == 201, stored.text
    assert stored.json()["size"] == 250_000
    for body in (DeclaredBody(400_000), ChunkedBody(400_000)):
        response = alice.call("POST", "/v1/attachments", data=body, headers=headers)
        assert "300,000 bytes" in refusal(response, 413, "body_too_large")
    # The partial upload left nothing behind.
    leftovers = [p.name for p in (relay.data_dir / "attachments").iterdir()]
    assert leftovers == [stored.json()["id"]]


# ---- 2. every integer bounded; no 5xx ----------------------------------------------


def test_integers_beyond_storage_are_refused_422_not_500(any_relay: RelayProcess) -> None:
    alice = register(any_relay)
    huge = 2**70
    cases = [
        alice.call("GET", f"/v1/messages?after={huge}"),
        alice.call("POST", "/v1/messages/ack", json={"seqs": [huge]}),
        alice.call("DELETE", f"/v1/devices/{huge}"),
        alice.call("GET", f"/v1/messages?after={2**63}"),
        alice.call("POST", "/v1/messages/ack", json={"seqs": [1, -(2**63) - 1]}),
    ]
    for response in cases:
        refusal(response, 422)
    # The largest values storage holds are served.
    assert alice.call("GET", f"/v1/messages?after={2**63 - 1}").json() == {"envelopes": []}
    assert alice.call("POST", "/v1/messages/ack", json={"seqs": [2**63 - 1]}).json() == {
        "removed": 0
    }
    refusal(alice.call("DELETE", f"/v1/devices/{2**31 - 1}"), 404)
    assert alice.call("GET", "/v1/devices").status_code == 200


def test_an_internal_error_is_a_json_500_and_one_log_line_without_traceback(
    relay: RelayProcess,
) -> None:
    alice = register(relay)
    # A real fault, as a full or broken disk would cause: the attachments directory
    # is gone and a file stands in its place.
    blobs = relay.data_dir / "attachments"
    shutil.rmtree(blobs)
    blobs.write_bytes(b"")
    response = alice.call(
        "POST",
        "/v1/attachments",
        data=b"blob",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 500
    assert response.json() == {"error": "the relay hit an internal error"}
    time.sleep(0.3)  # the log line is written after the response
    log = (relay.data_dir / "relay.log").read_text()
    assert "Traceback" not in log
    lines = [line for line in log.splitlines() if '"status":500' in line]
    assert len(lines) == 1, lines
    record = json.loads(lines[0][lines[0].index("{") :])
    assert record["route"] == "/v1/attachments"
    assert record["error"] == "NotADirectoryError"
    assert record["at"].startswith("server.py:")


# ---- 3. quotas per account and per device -------------------------------------------


def test_a_device_beyond_the_accounts_quota_is_refused_until_one_is_removed(
    tight_relay: RelayProcess,
) -> None:
    alice = register(tight_relay)
    added = [alice.call("POST", "/v1/devices", json={"device_name": f"d{n}"}) for n in range(2)]
    assert [r.status_code for r in added] == [201, 201]
    sentence = refusal(
        alice.call("POST", "/v1/devices", json={"device_name": "fourth"}), 409, "device_quota"
    )
    assert "3 active devices" in sentence
    assert alice.call("DELETE", "/v1/devices/2").status_code == 200
    again = alice.call("POST", "/v1/devices", json={"device_name": "fourth"})
    assert again.status_code == 201
    assert again.json()["device_id"] == 4
    # Another account is not held back by alice's.
    bob = register(tight_relay)
    assert bob.call("POST", "/v1/devices", json={"device_name": "phone"}).status_code == 201


def test_one_time_prekeys_beyond_the_devices_quota_are_refused_and_nothing_stored(
    tight_relay: RelayProcess,
) -> None:
    alice = register(tight_relay)
    first = {
        "one_time_prekeys": random_keys(50, 1),
        "one_time_kem_prekeys": random_keys(50, 1000),
    }
    assert alice.call("PUT", "/v1/keys", json=first).json()["one_time_prekeys"] == 50
    # Re-sending keys already stored adds nothing, so it fits.
    assert alice.call("PUT", "/v1/keys", json=first).json()["one_time_prekeys"] == 50
    over = {"one_time_prekeys": random_keys(5, 51), "one_time_kem_prekeys": random_keys(20, 1050)}
    sentence = refusal(alice.call("PUT", "/v1/keys", json=over), 409, "prekey_quota")
    assert "60 one-time prekeys" in sentence
    assert alice.call("GET", "/v1/keys/status").json() == {
        "one_time_prekeys": 50,
        "one_time_kem_prekeys": 50,
        "low": False,
    }
    fits = {"one_time_prekeys": random_keys(10, 51), "one_time_kem_prekeys": random_keys(10, 1050)}
    assert alice.call("PUT", "/v1/keys", json=fits).json()["one_time_prekeys"] == 60


def test_a_mailbox_full_of_bytes_refuses_that_copy_and_queues_the_others(
    tight_relay: RelayProcess,
) -> None:
    alice, bob, carol = register(tight_relay), register(tight_relay), register(tight_relay)
    big = secrets.token_bytes(200_000)
    assert send(alice, ("one", bob.username, 1, big))["one"]["status"] == "queued"
    results = send(
        alice,
        ("two-bob", bob.username, 1, big),  # 400,000 bytes would wait: over 300,000
        ("two-carol", carol.username, 1, big),
        ("one", bob.username, 1, big),  # a retry of a queued one
    )
    assert results["two-bob"]["status"] == "mailbox_full"
    assert results["two-bob"]["retry_after"] > 0
    assert results["two-carol"]["status"] == "queued"
    assert results["one"]["status"] == "duplicate"
    assert send(alice, ("three", bob.username, 1, big))["three"]["status"] == "mailbox_full"
    assert len(carol.call("GET", "/v1/messages").json()["envelopes"]) == 1
    # Small ones still fit beside what waits.
    assert send(alice, ("tiny", bob.username, 1, b"x" * 1000))["tiny"]["status"] == "queued"
    seqs = [e["seq"] for e in bob.call("GET", "/v1/messages").json()["envelopes"]]
    bob.call("POST", "/v1/messages/ack", json={"seqs": seqs})
    assert send(alice, ("three", bob.username, 1, big))["three"]["status"] == "queued"
    samples = metric_samples(tight_relay.url, str(tight_relay.ca_file))
    assert samples['relay_quota_refusals_total{kind="mailbox_bytes"}'] == 2
    assert samples['relay_quota_refusals_total{kind="mailbox_envelopes"}'] == 0


def test_attachment_bytes_per_day_are_limited_per_account(tight_relay: RelayProcess) -> None:
    alice, bob = register(tight_relay), register(tight_relay)
    headers = {"Content-Type": "application/octet-stream"}

    def upload(api: Api, body: bytes | ChunkedBody) -> requests.Response:
        return api.call("POST", "/v1/attachments", data=body, headers=headers)

    assert [upload(alice, bytes(100_000)).status_code for _ in range(2)] == [201, 201]
    for body in (bytes(60_000), ChunkedBody(60_000)):  # declared, and found while streaming
        response = upload(alice, body)
        refusal(response, 429, "attachment_quota")
        assert 86_000 < int(response.headers["Retry-After"]) <= 86_400
    # What is left of the day's 250,000 still fits; someone else's allowance is theirs.
    assert upload(alice, bytes(50_000)).status_code == 201
    assert upload(bob, bytes(100_000)).status_code == 201
    samples = metric_samples(tight_relay.url, str(tight_relay.ca_file))
    assert samples['relay_quota_refusals_total{kind="attachment"}'] == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


def test_the_attachment_allowance_frees_up_when_retry_after_says(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = RelaySettings(
        tmp_path, clock=clock, max_attachment_bytes=100_000, attachment_bytes_per_day=200_000
    )
    with TestClient(create_app(settings)) as http:
        token = http.post("/v1/accounts", json={"username": "alice", "device_name": "d"})
        headers = {"Authorization": f"Bearer {token.json()['token']}"}
        assert http.post("/v1/attachments", content=bytes(100_000), headers=headers).is_success
        clock.now += 2 * HOUR_MS
        assert http.post("/v1/attachments", content=bytes(100_000), headers=headers).is_success
        clock.now += HOUR_MS
        refused = http.post("/v1/attachments", content=bytes(100_000), headers=headers)
        assert refused.status_code == 429
        assert refused.json()["code"] == "attachment_quota"
        # The first upload leaves the 24-hour window 21 hours from now.
        wait = int(refused.headers["Retry-After"])
        assert wait == 21 * 3600
        clock.now += wait * 1000 - 1000
        assert http.post("/v1/attachments", content=bytes(100_000), headers=headers).is_error
        clock.now += 1000
        assert http.post("/v1/attachments", content=bytes(100_000), headers=headers).is_success


# ---- 4. one-time prekeys cannot be drained ---------------------------------------


def test_a_drainer_gets_at_most_the_bound_and_the_victims_next_contact_still_gets_a_session(
    tight_relay: RelayProcess,
) -> None:
    victim = register(tight_relay)
    identity = DeviceIdentity.generate()
    prekeys = LocalPrekeys.generate(batch=12)
    assert victim.call("PUT", "/v1/keys", json=prekeys.upload_json(identity)).status_code == 200
    context = ssl.create_default_context(cafile=str(tight_relay.ca_file))
    push_url = tight_relay.url.replace("https", "wss") + "/v1/push"
    with connect(
        push_url,
        additional_headers={"Authorization": f"Bearer {victim.token}"},
        ssl=context,
        open_timeout=10,
    ) as push:
        drainer = register(tight_relay)
        sybils = [register(tight_relay) for _ in range(3)]

        def one_time_keys(api: Api) -> int:
            device = api.call("GET", f"/v1/users/{victim.username}/keys").json()["devices"][0]
            return int(device["one_time_prekey"] is not None) + int(
                device["one_time_kem_prekey"] is not None
            )

        taken_by_drainer = sum(one_time_keys(drainer) for _ in range(20))
        assert taken_by_drainer == 3 * 2  # its 3 fetches an hour, one key of each kind
        taken_by_all = taken_by_drainer + sum(one_time_keys(s) for s in sybils for _ in range(5))
        assert taken_by_all == 5 * 2  # the victim's 5 handouts an hour, to everyone
        stock = victim.call("GET", "/v1/keys/status").json()
        assert stock["one_time_prekeys"] == 12 - 5
        # The fetches that left the stock low woke the victim's device to refill.
        frame = json.loads(push.recv(timeout=10))
        while frame["type"] == "ping":
            frame = json.loads(push.recv(timeout=30))
        assert frame == {"type": "keys_low"}
    # The victim's next real contact still starts a session, on the signed and
    # last-resort prekeys, and the victim reads the message.
    carol = register(tight_relay)
    carol_identity = DeviceIdentity.generate()
    entry = carol.call("GET", f"/v1/users/{victim.username}/keys").json()["devices"][0]
    bundle = RemoteBundle.from_fetched_device(entry)
    assert bundle.one_time_prekey is None
    assert bundle.kem_is_last_resort
    session = Session.initiate(carol_identity, bundle)
    send(carol, ("hello", victim.username, 1, session.encrypt(b"hello, victim")))
    envelope = victim.call("GET", "/v1/messages").json()["envelopes"][0]
    _session, plaintext, sender = Session.respond(
        identity, prekeys, base64.b64decode(envelope["body"])
    )
    assert plaintext == b"hello, victim"
    assert sender.to_bytes() == carol_identity.public.to_bytes()
    samples = metric_samples(tight_relay.url, str(tight_relay.ca_file))
    assert samples['relay_prekey_withheld_total{limit="requester"}'] == 17
    # The sybils' 15 fetches after the victim's fifth handout, and carol's.
    assert samples['relay_prekey_withheld_total{limit="target"}'] == 13 + 1
    # The drainer's last allowed fetch, and the victim's last handout of the hour.
    assert samples["relay_prekey_drain_suspected_total"] == 2


# ---- 5. files and deletion ---------------------------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_data_files_and_directories_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    data = tmp_path / "relay"
    # Left loose by an older version under a permissive umask.
    (data / "attachments").mkdir(parents=True, mode=0o777)
    data.chmod(0o777)
    (data / "attachments").chmod(0o777)
    loose_blob = data / "attachments" / ("ab" * 16)
    loose_blob.write_bytes(b"old blob")
    loose_blob.chmod(0o666)
    (data / "relay.sqlite3").touch(mode=0o644)
    (data / "relay.sqlite3").chmod(0o644)
    previous = os.umask(0)
    try:
        with TestClient(create_app(RelaySettings(data))) as http:
            token = http.post("/v1/accounts", json={"username": "alice", "device_name": "d"})
            headers = {"Authorization": f"Bearer {token.json()['token']}"}
            blob = http.post("/v1/attachments", content=b"new blob", headers=headers).json()
            modes = {
                path.relative_to(tmp_path).as_posix(): _mode(path)
                for path in [data, *data.rglob("*")]
            }
    finally:
        os.umask(previous)
    assert modes["relay"] == 0o700
    assert modes["relay/attachments"] == 0o700
    assert modes[f"relay/attachments/{loose_blob.name}"] == 0o600
    assert modes[f"relay/attachments/{blob['id']}"] == 0o600
    for name in ("relay.sqlite3", "relay.sqlite3-wal", "relay.sqlite3-shm"):
        assert modes[f"relay/{name}"] == 0o600, name


def test_a_running_relays_files_and_log_are_owner_only(relay: RelayProcess) -> None:
    register(relay)
    assert _mode(relay.data_dir) == 0o700
    assert _mode(relay.data_dir / "relay.log") == 0o600
    for path in relay.data_dir.glob("relay.sqlite3*"):
        assert _mode(path) == 0o600, path


def _database_bytes(data: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(data.glob("relay.sqlite3*")))


def test_an_acknowledged_body_is_gone_from_the_database_and_its_wal(tmp_path: Path) -> None:
    small = b"MARKER-small-" + uuid.uuid4().hex.encode()
    # Larger than a page: stored on overflow pages, which are freed differently.
    large = b"MARKER-large-" + uuid.uuid4().hex.encode() + secrets.token_bytes(20_000)
    with TestClient(create_app(RelaySettings(tmp_path))) as http:
        tokens = [
            http.post("/v1/accounts", json={"username": name, "device_name": "d"}).json()["token"]
            for name in ("alice", "bob")
        ]
        alice, bob = ({"Authorization": f"Bearer {token}"} for token in tokens)
        messages = [
            {"id": cid, "recipient": "bob", "device_id": 1, "body": b64(body)}
            for cid, body in (("small", small), ("large", large))
        ]
        assert http.post("/v1/messages", json={"messages": messages}, headers=alice).is_success
        # The search below can find them: before the acknowledgement, it does.
        stored = _database_bytes(tmp_path)
        assert small in stored
        assert large[:64] in stored
        seqs = [e["seq"] for e in http.get("/v1/messages", headers=bob).json()["envelopes"]]
        acked = http.post("/v1/messages/ack", json={"seqs": seqs}, headers=bob).json()
        assert acked == {"removed": 2}
        http.app.state.scrub()  # type: ignore[attr-defined]
        remaining = _database_bytes(tmp_path)
        assert small not in remaining
        assert large[:64] not in remaining
        assert large[-64:] not in remaining


def test_a_running_relay_scrubs_acknowledged_bodies_within_seconds(relay: RelayProcess) -> None:
    alice, bob = register(relay), register(relay)
    marker = b"MARKER-" + uuid.uuid4().hex.encode()
    send(alice, ("m", bob.username, 1, marker))
    assert marker in _database_bytes(relay.data_dir)
    seqs = [e["seq"] for e in bob.call("GET", "/v1/messages").json()["envelopes"]]
    bob.call("POST", "/v1/messages/ack", json={"seqs": seqs})
    acked = time.monotonic()
    while marker in _database_bytes(relay.data_dir):
        assert time.monotonic() - acked < 15, "the acknowledged body is still in the files"
        time.sleep(0.25)
    # Checkpointed and truncated, not merely overwritten later.
    assert (relay.data_dir / "relay.sqlite3-wal").stat().st_size == 0


# ---- 6. metrics --------------------------------------------------------------------


def test_metrics_expose_refusals_and_mailbox_depth_without_user_data(tmp_path: Path) -> None:
    settings = RelaySettings(tmp_path, max_devices_per_account=1, rate_per_second=1, rate_burst=3)
    with TestClient(create_app(settings)) as http:
        names = ("alice-abuse", "bob-abuse", "carol-abuse")
        tokens = {
            name: http.post("/v1/accounts", json={"username": name, "device_name": "d"}).json()[
                "token"
            ]
            for name in names
        }
        alice = {"Authorization": f"Bearer {tokens['alice-abuse']}"}
        for count, recipient in ((3, "bob-abuse"), (1, "carol-abuse")):
            messages = [
                {"id": f"m{n}", "recipient": recipient, "device_id": 1, "body": b64(bytes(100))}
                for n in range(count)
            ]
            assert http.post("/v1/messages", json={"messages": messages}, headers=alice).is_success
        assert http.post("/v1/devices", json={"device_name": "x"}, headers=alice).status_code == 409
        statuses = [http.get("/v1/devices", headers=alice).status_code for _ in range(5)]
        assert 429 in statuses
        assert http.post("/v1/accounts", content=bytes(70_000)).status_code == 413
        text = http.get("/metrics").text
    samples = parse_exposition(text)
    assert samples['relay_quota_refusals_total{kind="device"}'] == 1
    assert samples['relay_quota_refusals_total{kind="prekey"}'] == 0
    assert samples['relay_rate_limited_total{kind="account"}'] >= 1
    assert samples['relay_body_too_large_total{route="/v1/accounts"}'] == 1
    assert samples["relay_mailbox_envelopes"] == 4
    assert samples["relay_mailbox_bytes"] == 400
    assert samples["relay_mailbox_devices"] == 2
    assert samples["relay_mailbox_max_device_envelopes"] == 3
    assert samples["relay_mailbox_max_device_bytes"] == 300
    assert samples["relay_push_connections"] == 0
    assert samples['relay_requests_total{method="POST",route="/v1/accounts",status="413"}'] == 1
    for name in names:
        assert name not in text
    for token in tokens.values():
        assert token not in text


def test_every_quota_flag_sets_its_setting_and_names_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    defaults = {f.name: f.default for f in fields(RelaySettings)}
    for flag, setting, text in QUOTA_FLAGS:
        assert text.endswith(f"(default: {defaults[setting]})"), flag
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    shown = capsys.readouterr().out
    assert all(flag in shown for flag, _setting, _text in QUOTA_FLAGS)
    args = build_parser().parse_args(
        ["serve", "--data", "/tmp/x", "--max-devices", "7", "--mailbox-max-bytes", "999999"]
    )
    assert quota_settings(args) == {"max_devices_per_account": 7, "mailbox_quota_bytes": 999999}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--data", "/tmp/x", "--max-devices", "0"])


# ---- an older database --------------------------------------------------------------

OLD_ENVELOPES = """CREATE TABLE envelopes (
    seq {serial},
    account_id {int} NOT NULL,
    device_id {int} NOT NULL,
    client_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    sender_device {int} NOT NULL,
    body {blob} NOT NULL,
    created_at {int} NOT NULL,
    UNIQUE (account_id, device_id, sender, client_id)
)"""
OLD_ATTACHMENTS = (
    "CREATE TABLE attachments (id TEXT PRIMARY KEY, size {int} NOT NULL, created_at {int} NOT NULL)"
)
OLD_ENVELOPE = (
    "INSERT INTO envelopes (account_id, device_id, client_id, sender, sender_device, body,"
    " created_at) VALUES (1, 1, 'old', 'alice', 1, {param}, 0)"
)


def test_a_database_from_before_the_quotas_is_migrated(backend: str | None, tmp_path: Path) -> None:
    waiting = secrets.token_bytes(1234)
    if backend is None:
        sqlite_types = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "int": "INTEGER"}
        with sqlite3.connect(tmp_path / "relay.sqlite3") as old:
            old.execute(OLD_ENVELOPES.format(blob="BLOB", **sqlite_types))
            old.execute(OLD_ATTACHMENTS.format(**sqlite_types))
            old.execute(OLD_ENVELOPE.format(param="?"), (waiting,))
        old.close()
    else:
        postgres_types = {"serial": "BIGSERIAL PRIMARY KEY", "int": "BIGINT"}
        with psycopg.connect(backend, autocommit=True) as old:
            old.execute(OLD_ENVELOPES.format(blob="BYTEA", **postgres_types))
            old.execute(OLD_ATTACHMENTS.format(**postgres_types))
            old.execute(OLD_ENVELOPE.format(param="%s"), (waiting,))
    storage = open_storage(tmp_path, backend)
    try:
        # The envelope already waiting counts with its size.
        depth = storage.mailbox_depth()
        assert (depth.envelopes, depth.bytes) == (1, 1234)
        quota = MailboxQuota(envelopes=10, bytes=2000)
        new = NewEnvelope(1, 1, "new", "alice", 1, bytes(1000), 0)
        assert storage.enqueue([new], quota) == ["quota_bytes"]
        storage.add_attachment("ab" * 16, 100, 0, account_id=1, daily_bytes=150)
        with pytest.raises(QuotaExceeded):
            storage.add_attachment("cd" * 16, 100, 0, account_id=1, daily_bytes=150)
    finally:
        storage.close()
