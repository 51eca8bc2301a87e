"""The relay's sealed-sender routes (docs/relay-api.md, "Sealed sender"): sender
certificates, delivery tokens, and sealed mail stored without its sender."""

from __future__ import annotations

import sqlite3
import time
import uuid
from dataclasses import fields

import pytest
import requests

from app.crypto import VerifyKey
from app.net import Conflict, OutgoingEnvelope
from app.protocol.sealed import SenderCertificate, access_key
from relay.cli import build_parser, sealed_rate_settings
from relay.server import RelaySettings
from tests.relay.helpers import account, client
from tests.support.components import RelayProcess


def _sealed(recipient: str, body: bytes, key: bytes | None) -> OutgoingEnvelope:
    return OutgoingEnvelope(uuid.uuid4().hex, recipient, 1, body, key)


def test_certificates_are_signed_by_the_pinned_key_for_the_asking_device(
    relay: RelayProcess,
) -> None:
    alice = account(relay, "alice", keys=1)
    raw, expires = alice.sender_certificate()
    certificate = SenderCertificate.from_bytes(raw)
    pinned = VerifyKey(bytes.fromhex(relay.sender_certificate_key))
    identity = certificate.verify((pinned,), expires - 1)
    assert (certificate.username, certificate.device_id) == ("alice", 1)
    assert identity.to_bytes() == certificate.identity
    # Short-lived: a day, not the weeks a stolen one would be worth.
    assert 0 < expires - int(time.time() * 1000) <= 86_400_000
    # Without keys published there is no identity to certify.
    nokeys = client(relay)
    nokeys.register("nokeys", "laptop")
    with pytest.raises(Conflict, match="publish"):
        nokeys.sender_certificate()
    anonymous = requests.get(f"{relay.url}/v1/certificate", verify=str(relay.ca_file), timeout=5)
    assert anonymous.status_code == 401


def test_a_stranger_without_the_delivery_token_is_refused(relay: RelayProcess) -> None:
    bob = account(relay, "bob", keys=1)
    profile_key = bytes(range(32))
    bob.set_sealed_access(access_key(profile_key), allow_anyone=False)
    stranger = client(relay)  # no account, no token: sealed sends need none
    answers = stranger.send_sealed(
        [
            _sealed("bob", b"no token", None),
            _sealed("bob", b"wrong token", access_key(bytes(32))),
            _sealed("bob", b"right token", access_key(profile_key)),
            _sealed("nobody", b"no such user", access_key(profile_key)),
        ]
    )
    assert sorted(answers.values()) == [
        "access_denied",
        "access_denied",
        "queued",
        "unknown_recipient",
    ]
    waiting = bob.fetch()
    assert [e.body for e in waiting] == [b"right token"]
    assert waiting[0].sealed
    assert (waiting[0].sender, waiting[0].sender_device) == ("", 0)
    # "Allow sealed messages from anyone": then no token is needed.
    bob.set_sealed_access(access_key(profile_key), allow_anyone=True)
    answer = stranger.send_sealed([_sealed("bob", b"from anyone", None)])
    assert list(answer.values()) == ["queued"]
    # A sealed send with a token is refused: it would name the sender's account.
    alice = account(relay, "alice", keys=1)
    response = requests.post(
        f"{relay.url}/v1/sealed/messages",
        json={"messages": [{"id": "x1", "recipient": "bob", "device_id": 1, "body": "eA=="}]},
        headers={"Authorization": f"Bearer {alice.token}"},
        verify=str(relay.ca_file),
        timeout=5,
    )
    assert response.status_code == 400
    # Stored without any sender; a retry of the same id is a duplicate, not a copy.
    row_id = uuid.uuid4().hex
    for _ in range(2):
        stranger.send_sealed([OutgoingEnvelope(row_id, "bob", 1, b"once", None)])
    database = sqlite3.connect(relay.data_dir / "relay.sqlite3")
    rows = database.execute(
        "SELECT sender, sender_device FROM envelopes WHERE client_id = ?", (row_id,)
    ).fetchall()
    database.close()
    assert rows == [(None, None)]


def test_sealed_sends_are_rate_limited_per_token(relay_factory: object) -> None:
    relay = relay_factory(extra_args=[])  # type: ignore[operator]
    bob = account(relay, "bob", keys=1)
    key = access_key(bytes(32))
    bob.set_sealed_access(key, allow_anyone=False)
    stranger = client(relay)
    statuses: list[str] = []
    for _ in range(3):
        batch = [_sealed("bob", b"m", key) for _ in range(60)]
        statuses += stranger.send_sealed(batch).values()
    # The default bucket holds 100: the rest of the 180 wait, with a Retry-After.
    assert statuses.count("queued") >= 100
    assert "rate_limited" in statuses


def test_the_sealed_rate_flags_set_the_buckets_and_name_their_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    defaults = {f.name: f.default for f in fields(RelaySettings)}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"per connection (default: {defaults['sealed_rate_per_second']})" in shown
    assert f"applies (default: {defaults['sealed_rate_burst']})" in shown
    parse = build_parser().parse_args
    assert sealed_rate_settings(parse(["serve", "--data", "/tmp/x"])) == {}
    args = parse(["serve", "--data", "/tmp/x", "--sealed-rate", "2.5", "--sealed-burst", "7"])
    assert sealed_rate_settings(args) == {"sealed_rate_per_second": 2.5, "sealed_rate_burst": 7}
    for refused in (["--sealed-rate", "0"], ["--sealed-rate", "nan"], ["--sealed-burst", "0.5"]):
        with pytest.raises(SystemExit):
            parse(["serve", "--data", "/tmp/x", *refused])


def test_a_relay_started_with_a_small_sealed_burst_keeps_to_it(relay_factory: object) -> None:
    relay = relay_factory(extra_args=["--sealed-rate", "0.01", "--sealed-burst", "5"])  # type: ignore[operator]
    bob = account(relay, "bob", keys=1)
    key = access_key(bytes(32))
    bob.set_sealed_access(key, allow_anyone=False)
    statuses = list(
        client(relay).send_sealed([_sealed("bob", b"m", key) for _ in range(12)]).values()
    )
    # The token's bucket holds 5, and refills one in 100 s.
    assert statuses.count("queued") == 5
    assert statuses.count("rate_limited") == 7
