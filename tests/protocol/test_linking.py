"""Linking a new device (app/protocol/linking.py, docs/protocol.md §14): the codes,
a whole link between two in-memory sides, a relay substituting either key, chunks
replayed, reordered, cut or altered, and the vectors - re-derived here with the
standard library (RFC 7748 and RFC 5869 written out) and opened with plain
`cryptography` AES-GCM, from §14 alone."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.crypto import DhPrivateKey
from app.protocol.device_list import open_device_list, sign_device_list
from app.protocol.errors import AuthenticationError, ProtocolError, ReplayError
from app.protocol.identity import DeviceIdentity
from app.protocol.linking import (
    MAX_CHUNK_LENGTH,
    DeviceHello,
    Direction,
    ExistingDeviceLink,
    LinkAuthenticationError,
    LinkCodeError,
    LinkCommitmentError,
    LinkError,
    LinkFormatError,
    LinkInvite,
    LinkOrderError,
    LinkProvisionError,
    LinkRefusal,
    LinkReplayError,
    LinkStateError,
    LinkTruncatedError,
    LinkVersionError,
    NewDeviceLink,
    Opener,
    Provision,
    ShortCode,
    derive_link_keys,
    parse_link_code,
    parse_link_message,
    seal_chunks,
)
from scripts.gen_linking_vectors import FixedRng, deterministic, large_sync_state

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "linking_v1.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text())
RFC7748 = json.loads(
    (
        Path(__file__).resolve().parents[1] / "vectors" / "external" / "rfc7748_x25519.json"
    ).read_text()
)
NOW = 1_800_000_000_000
MAILBOX = "K7QMZ2XA"
CODE_FORM = re.compile(r"[0-9]{3} [0-9]{3}")


# ---- a link between two in-memory sides ------------------------------------------------


class Account:
    """The existing device's account and the new device's identity, with the
    provision E makes for N once it has N's hello."""

    def __init__(self) -> None:
        self.identity = DeviceIdentity.generate()
        self.new_identity = DeviceIdentity.generate()

    def hello(self, name: str = "Laptop") -> DeviceHello:
        return DeviceHello(name, self.new_identity.public.to_bytes())

    def provision(self, hello: DeviceHello, sync_state: bytes = b"state") -> Provision:
        device_list = sign_device_list(
            self.identity, 2, [(1, self.identity.public), (2, hello.identity())], NOW
        )
        return Provision(
            username="alice",
            device_id=2,
            relay_token="token-for-the-new-device",
            account_identity=self.identity.to_bytes(),
            device_list=device_list,
            sync_state=sync_state,
            history_offer=True,
        )


def _started() -> tuple[Account, NewDeviceLink, ExistingDeviceLink, list[bytes]]:
    """Both sides up to N's hello chunks (not yet opened by E)."""
    account = Account()
    new, existing = NewDeviceLink(), ExistingDeviceLink()
    existing.start(parse_link_code(new.invite(MAILBOX).qr_text()))
    hello_chunks, _code = new.respond(existing.public_key, account.hello())
    return account, new, existing, hello_chunks


def _provision_chunks(sync_state: bytes = b"state") -> tuple[Account, NewDeviceLink, list[bytes]]:
    account, new, existing, hello_chunks = _started()
    hello = existing.open_hello(hello_chunks)
    return account, new, existing.provision(account.provision(hello, sync_state))


def test_a_full_link_by_qr_code() -> None:
    account = Account()
    new, existing = NewDeviceLink(), ExistingDeviceLink()
    qr = new.invite(MAILBOX).qr_text()  # N shows it; E scans it
    pk_e = existing.start(parse_link_code(qr))
    assert existing.mailbox_id == MAILBOX
    hello_chunks, code = new.respond(pk_e, account.hello("Laptop"))
    assert code == new.confirmation_code == existing.confirmation_code
    hello = existing.open_hello(hello_chunks)
    assert hello.device_name == "Laptop"
    assert hello.identity().to_bytes() == account.new_identity.public.to_bytes()
    sent = account.provision(hello)
    received = new.open_provision(existing.provision(sent))
    assert received == sent
    assert isinstance(received, Provision)
    assert received.account().public.to_bytes() == account.identity.public.to_bytes()
    listed = open_device_list(received.device_list, received.account().public)
    assert listed.device_ids() == [1, 2]
    assert received.history_offer and received.version == 1


def test_a_full_link_by_short_code() -> None:
    account = Account()
    new, existing = NewDeviceLink(), ExistingDeviceLink()
    typed = new.invite(MAILBOX).short_code().lower().replace("-", " ")
    code = parse_link_code(typed)
    assert isinstance(code, ShortCode) and code.mailbox_id == MAILBOX
    # E fetches pk_N from the mailbox the code names and checks the commitment.
    pk_e = existing.start(code, mailbox_key=new.public_key)
    hello_chunks, confirmation = new.respond(pk_e, account.hello())
    assert confirmation == existing.confirmation_code
    hello = existing.open_hello(hello_chunks)
    assert new.open_provision(existing.provision(account.provision(hello))).username == "alice"


def test_the_confirmation_code_is_the_same_on_both_sides_and_has_the_documented_form() -> None:
    codes = set()
    for _ in range(40):
        _account, new, existing, _chunks = _started()
        assert new.confirmation_code == existing.confirmation_code
        assert CODE_FORM.fullmatch(new.confirmation_code)
        codes.add(new.confirmation_code)
    assert len(codes) > 35  # fresh keys, fresh codes


# ---- codes ------------------------------------------------------------------------------


def test_qr_text_and_short_code_round_trip() -> None:
    new = NewDeviceLink()
    invite = new.invite(MAILBOX)
    qr = invite.qr_text()
    assert qr.startswith(f"cipherline-link:1:{MAILBOX}:") and "=" not in qr
    assert len(qr.rsplit(":", 1)[1]) == 43
    assert parse_link_code(qr) == invite
    assert parse_link_code(f"  {qr}\n") == invite
    assert parse_link_code(qr.replace("cipherline-link", "CIPHERLINE-LINK")) == invite
    short = invite.short_code()
    assert re.fullmatch(r"([A-Z2-7]{4}-){4}[A-Z2-7]{4}", short)
    assert short.replace("-", "").startswith(MAILBOX)
    parsed = parse_link_code(short)
    assert parsed == invite.to_short_code() and isinstance(parsed, ShortCode)
    assert parsed.text() == short
    assert parsed.matches(new.public_key)
    assert not parsed.matches(NewDeviceLink().public_key)
    assert not parsed.matches(new.public_key[:31])


def test_parsing_tolerates_case_spaces_dashes_and_confusable_digits() -> None:
    invite = LinkInvite("OIBAOIBA", NewDeviceLink().public_key)
    short = invite.short_code()
    for typed in (
        short.lower(),
        short.replace("-", ""),
        " ".join(short.replace("-", "")),
        short.replace("-", " - "),
        short.replace("O", "0").replace("I", "1").replace("B", "8"),
    ):
        assert parse_link_code(typed) == invite.to_short_code(), typed


def test_a_mistyped_code_does_not_match_and_is_refused_with_a_sentence() -> None:
    new = NewDeviceLink()
    short = new.invite(MAILBOX).short_code()
    for position in range(len(short)):
        if short[position] == "-":
            continue
        other = "A" if short[position] != "A" else "B"
        typo = short[:position] + other + short[position + 1 :]
        code = parse_link_code(typo)
        assert isinstance(code, ShortCode)
        assert not code.matches(new.public_key)
        with pytest.raises(LinkCommitmentError, match="does not match"):
            ExistingDeviceLink().start(code, mailbox_key=new.public_key)


@pytest.mark.parametrize("length", [0, 1, 19, 21, 24])
def test_codes_of_the_wrong_length_are_refused_with_a_sentence(length: int) -> None:
    typed = ("ABCD" * 6)[:length]
    with pytest.raises(LinkCodeError) as caught:
        parse_link_code(typed)
    message = str(caught.value)
    assert message[0].isupper() and message.endswith(".")
    if length:
        assert f"this one has {length}" in message


@pytest.mark.parametrize("bad", ["9", "?", "é", "+", "_"])
def test_codes_with_characters_outside_the_alphabet_are_refused(bad: str) -> None:
    short = NewDeviceLink().invite(MAILBOX).short_code()
    with pytest.raises(LinkCodeError, match="A to Z") as caught:
        parse_link_code(short[:5] + bad + short[6:])
    assert f'"{bad.upper()}"' in str(caught.value)


def test_qr_texts_with_a_wrong_prefix_version_or_key_are_refused() -> None:
    qr = NewDeviceLink().invite(MAILBOX).qr_text()
    prefix, version, mailbox, key = qr.split(":")
    cases = {
        "https://example.org/link": "not a Cipherline link code",
        f"cipherline-lnk:1:{mailbox}:{key}": "not a Cipherline link code",
        f"{prefix}:x:{mailbox}:{key}": "not a Cipherline link code",
        f"{prefix}:2:{mailbox}:{key}": "another version",
        f"{prefix}:0:{mailbox}:{key}": "another version",
        f"{prefix}:{version}:{mailbox}": "damaged",
        f"{prefix}:{version}:{mailbox}:{key}:extra": "damaged",
        f"{prefix}:{version}:{mailbox[:7]}:{key}": "damaged",
        f"{prefix}:{version}:{mailbox[:7]}9:{key}": "damaged",
        f"{prefix}:{version}:{mailbox}:{key[:-1]}": "damaged",
        f"{prefix}:{version}:{mailbox}:{key}A": "damaged",
        f"{prefix}:{version}:{mailbox}:{key[:-1]}+": "damaged",
        f"{prefix}:{version}:{mailbox}:{key}=": "damaged",
    }
    # A last character with its two spare bits set names the same key: not canonical.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(key[-1])
    cases[f"{prefix}:{version}:{mailbox}:{key[:-1]}{alphabet[last | 1]}"] = "damaged"
    if last | 1 == last:
        cases.pop(f"{prefix}:{version}:{mailbox}:{key[:-1]}{alphabet[last | 1]}")
    for text, reason in cases.items():
        with pytest.raises(LinkCodeError, match=reason):
            parse_link_code(text)


def test_an_empty_code_asks_for_one() -> None:
    for text in ("", "   ", "\n"):
        with pytest.raises(LinkCodeError, match="Enter the link code"):
            parse_link_code(text)


def test_a_mailbox_id_from_the_relay_must_be_base32() -> None:
    for mailbox in ("SHORT", "TOOLONGID", "abcdefgh", "ABCDEFG1"):
        with pytest.raises(LinkCodeError):
            NewDeviceLink().invite(mailbox)


def test_a_code_without_a_usable_key_is_refused() -> None:
    low_order = LinkInvite(MAILBOX, bytes(32))  # the all-zero X25519 point
    with pytest.raises(LinkCodeError, match="usable key"):
        ExistingDeviceLink().start(parse_link_code(low_order.qr_text()))
    new = NewDeviceLink()
    with pytest.raises(LinkAuthenticationError, match="not usable"):
        new.respond(bytes(32), Account().hello())
    with pytest.raises(LinkFormatError):
        new.respond(bytes(31), Account().hello())
    # Neither changed anything: the genuine key still links.
    existing = ExistingDeviceLink()
    existing.start(new.invite(MAILBOX))
    _chunks, code = new.respond(existing.public_key, Account().hello())
    assert code == existing.confirmation_code


# ---- a relay in the middle ----------------------------------------------------------------


def test_a_relay_substituting_the_existing_devices_key_is_seen_in_the_codes() -> None:
    account = Account()
    new, existing = NewDeviceLink(), ExistingDeviceLink()
    existing.start(parse_link_code(new.invite(MAILBOX).qr_text()))
    # The relay answers N with a key of its own and plays the existing device.
    relay = ExistingDeviceLink()
    relay.start(new.invite(MAILBOX))
    hello_chunks, code_on_new = new.respond(relay.public_key, account.hello())
    assert code_on_new != existing.confirmation_code
    with pytest.raises(LinkAuthenticationError):
        existing.open_hello(hello_chunks)  # E never gets a hello it can open
    # What E sends (were its user to go on) is sealed under its link with the
    # genuine N: the relay cannot read it, and N, linked to the relay, opens none of it.
    with pytest.raises(LinkAuthenticationError):
        new.receive(existing.refuse("The codes did not match.")[0])
    # The relay's own provision opens on N: only the user comparing codes stops it.
    relay_hello = relay.open_hello(hello_chunks)
    forged = relay.provision(Account().provision(relay_hello))
    assert isinstance(new.open_provision(forged), Provision)
    assert relay.confirmation_code == code_on_new != existing.confirmation_code


def test_a_relay_substituting_the_new_devices_key_is_caught() -> None:
    new = NewDeviceLink()
    invite = new.invite(MAILBOX)
    relay = NewDeviceLink()
    # Short code: the relay serves its own key for the mailbox.
    with pytest.raises(LinkCommitmentError):
        ExistingDeviceLink().start(invite.to_short_code(), mailbox_key=relay.public_key)
    # QR code: the key is in the code; a relay key beside it is refused too.
    with pytest.raises(LinkCommitmentError):
        ExistingDeviceLink().start(invite, mailbox_key=relay.public_key)
    ExistingDeviceLink().start(invite, mailbox_key=new.public_key)
    # Were E to link with the relay's key anyway, the codes would differ and the
    # genuine N opens nothing E sends.
    account = Account()
    existing = ExistingDeviceLink()
    existing.start(relay.invite(MAILBOX))
    relay_chunks, relay_code = relay.respond(existing.public_key, account.hello())
    _new_chunks, new_code = new.respond(existing.public_key, account.hello())
    assert new_code != existing.confirmation_code == relay_code
    hello = existing.open_hello(relay_chunks)
    with pytest.raises(LinkAuthenticationError):
        new.receive(existing.provision(account.provision(hello))[0])


# ---- chunks ----------------------------------------------------------------------------------


def test_a_multi_mebibyte_sync_state_travels_in_chunks() -> None:
    sync_state = hashlib.shake_256(b"a big account").digest(5 * 1024 * 1024 + 123)
    _account, new, chunks = _provision_chunks(sync_state)
    assert len(chunks) == 81
    assert all(len(chunk) <= MAX_CHUNK_LENGTH for chunk in chunks)
    assert [int.from_bytes(chunk[2:6], "big") for chunk in chunks] == list(range(81))
    for chunk in chunks[:-1]:
        assert new.receive(chunk) is None
    received = new.receive(chunks[-1])
    assert isinstance(received, Provision) and received.sync_state == sync_state
    with pytest.raises(LinkStateError):
        new.receive(chunks[-1])  # the link is over and its keys are gone


def test_a_message_of_exactly_one_piece_and_an_empty_one() -> None:
    keys = derive_link_keys(
        DhPrivateKey.generate(),
        DhPrivateKey.generate().public_key().to_bytes(),
        new_public_key=bytes(32),
        existing_public_key=bytes(32),
    )
    for length in (0, 1, 65_513, 65_514, 2 * 65_513):
        body = bytes(range(256)) * (length // 256 + 1)
        body = body[:length]
        chunks = seal_chunks(keys.new_to_existing, Direction.NEW_TO_EXISTING, 0, body)
        assert len(chunks) == max(1, -(-length // 65_513))
        assert all(len(chunk) <= MAX_CHUNK_LENGTH for chunk in chunks)
        opener = Opener(keys.new_to_existing, Direction.NEW_TO_EXISTING)
        results = [opener.add(chunk) for chunk in chunks]
        assert results[-1] == body and all(r is None for r in results[:-1])


def test_replayed_chunks_are_refused_and_change_nothing() -> None:
    _account, new, chunks = _provision_chunks(bytes(200_000))
    assert len(chunks) == 4
    assert new.receive(chunks[0]) is None
    assert new.receive(chunks[1]) is None
    for replay in (chunks[0], chunks[1]):
        with pytest.raises(LinkReplayError) as caught:
            new.receive(replay)
        assert isinstance(caught.value, ReplayError) and isinstance(caught.value, LinkOrderError)
    assert new.receive(chunks[2]) is None
    assert isinstance(new.receive(chunks[3]), Provision)


def test_reordered_chunks_are_refused() -> None:
    _account, new, chunks = _provision_chunks(bytes(200_000))
    with pytest.raises(LinkOrderError, match="before chunk 0"):
        new.receive(chunks[1])
    with pytest.raises(LinkOrderError):
        new.open_provision([chunks[0], chunks[2], chunks[1], chunks[3]])
    _account, new, chunks = _provision_chunks(bytes(200_000))
    with pytest.raises(LinkOrderError):
        new.open_provision(reversed(chunks))


def test_a_cut_message_or_chunk_is_refused() -> None:
    _account, new, chunks = _provision_chunks(bytes(200_000))
    with pytest.raises(LinkTruncatedError):
        new.open_provision(chunks[:-1])  # the last chunk never came
    _account, new, chunks = _provision_chunks(bytes(200_000))
    for cut in (0, 1, 5, 6, 22, 23, len(chunks[0]) // 2, len(chunks[0]) - 1):
        with pytest.raises(LinkError):
            new.receive(chunks[0][:cut])
    with pytest.raises(LinkAuthenticationError):
        new.receive(chunks[0][:-1])
    with pytest.raises(LinkFormatError):
        new.receive(chunks[0] + b"\x00")  # longer than a mailbox message
    assert new.receive(chunks[0]) is None  # none of it changed the state
    _account, new, chunks = _provision_chunks()
    with pytest.raises(LinkFormatError, match="follow the end"):
        new.open_provision([*chunks, chunks[0]])


def test_every_flipped_bit_of_a_chunk_is_refused() -> None:
    _account, new, chunks = _provision_chunks()
    assert len(chunks) == 1
    chunk = chunks[0]
    for position in range(len(chunk)):
        for bit in (0x01, 0x80):
            changed = bytearray(chunk)
            changed[position] ^= bit
            with pytest.raises(LinkError) as caught:
                new.receive(bytes(changed))
            expected: type[LinkError]
            if position == 0:
                expected = LinkVersionError
            elif position == 1:
                expected = LinkAuthenticationError  # another direction
            elif position < 6:
                expected = LinkOrderError
            else:
                expected = LinkAuthenticationError
            assert isinstance(caught.value, expected), (position, bit, caught.value)
    assert isinstance(new.receive(chunk), Provision)


def test_a_chunk_for_the_other_direction_or_under_another_key_is_refused() -> None:
    account, new, existing, hello_chunks = _started()
    # N's own hello reflected back to it by the relay.
    with pytest.raises(LinkAuthenticationError, match="other direction"):
        new.receive(hello_chunks[0])
    # The same bytes re-labelled with E's direction: the AD differs, so the tag fails.
    relabelled = hello_chunks[0][:1] + bytes([Direction.EXISTING_TO_NEW]) + hello_chunks[0][2:]
    with pytest.raises(LinkAuthenticationError, match="failed authentication"):
        new.receive(relabelled)
    # Another link's chunk at the same index.
    _other_account, _other_new, other_chunks = _provision_chunks()
    with pytest.raises(LinkAuthenticationError) as caught:
        new.receive(other_chunks[0])
    assert isinstance(caught.value, AuthenticationError)
    hello = existing.open_hello(hello_chunks)
    assert isinstance(new.open_provision(existing.provision(account.provision(hello))), Provision)


# ---- messages -----------------------------------------------------------------------------


def test_a_refusal_reaches_the_new_device() -> None:
    _account, new, existing, hello_chunks = _started()
    existing.open_hello(hello_chunks)
    received = new.open_provision(existing.refuse("The codes did not match."))
    assert received == LinkRefusal("The codes did not match.")
    with pytest.raises(LinkStateError):
        existing.refuse("again")
    # E may also decline before the hello arrives.
    _account, new, existing, _chunks = _started()
    assert isinstance(new.open_provision(existing.refuse("Cancelled")), LinkRefusal)


def test_a_provision_that_does_not_name_the_new_device_is_refused() -> None:
    account, new, existing, hello_chunks = _started()
    hello = existing.open_hello(hello_chunks)
    good = account.provision(hello)
    stranger = DeviceIdentity.generate()
    wrong_lists = [
        # another device under id 2; the new device under another id; another signer
        sign_device_list(
            account.identity, 2, [(1, account.identity.public), (2, stranger.public)], NOW
        ),
        sign_device_list(
            account.identity, 2, [(1, account.identity.public), (3, hello.identity())], NOW
        ),
        sign_device_list(stranger, 2, [(1, account.identity.public), (2, hello.identity())], NOW),
    ]
    for device_list in wrong_lists:
        bad = replace(good, device_list=device_list)
        with pytest.raises(ValueError, match="device list"):
            existing.provision(bad)
        # The same provision from a peer with that bug: N refuses it.
        existing_private = DhPrivateKey.generate().to_bytes()
        fresh_new = NewDeviceLink()
        fresh_existing = ExistingDeviceLink(FixedRng(existing_private))
        fresh_existing.start(fresh_new.invite(MAILBOX))
        fresh_new.respond(fresh_existing.public_key, hello)
        keys = derive_link_keys(
            DhPrivateKey(existing_private),
            fresh_new.public_key,
            new_public_key=fresh_new.public_key,
            existing_public_key=fresh_existing.public_key,
        )
        chunks = seal_chunks(keys.existing_to_new, Direction.EXISTING_TO_NEW, 0, bad.to_bytes())
        with pytest.raises(LinkProvisionError):
            fresh_new.open_provision(chunks)
    with pytest.raises(ValueError, match="account identity"):
        existing.provision(replace(good, account_identity=b"\x01" + bytes(10)))
    assert isinstance(new.open_provision(existing.provision(good)), Provision)


def test_messages_of_an_unknown_version_or_type_are_refused() -> None:
    account = Account()
    hello = account.hello()
    body = account.provision(hello).to_bytes()
    with pytest.raises(LinkVersionError, match="provision version 2"):
        parse_link_message(body[:1] + b"\x02" + body[2:])
    with pytest.raises(LinkVersionError):
        parse_link_message(hello.to_bytes()[:1] + b"\x09" + hello.to_bytes()[2:])
    with pytest.raises(LinkFormatError, match="type 7"):
        parse_link_message(b"\x07\x01")
    with pytest.raises(LinkFormatError):
        parse_link_message(body + b"\x00")
    with pytest.raises(LinkFormatError):
        parse_link_message(body[:-1])
    spliced = bytearray(hello.to_bytes())
    spliced[-1] ^= 1  # the identity's binding signature
    with pytest.raises(LinkFormatError):
        parse_link_message(bytes(spliced))
    with pytest.raises(ValueError):
        replace(account.provision(hello), version=2).to_bytes()
    for name in ("", "x" * 65):
        with pytest.raises(ValueError):
            DeviceHello(name, hello.device_identity).to_bytes()


def test_steps_out_of_turn_are_refused() -> None:
    account = Account()
    new, existing = NewDeviceLink(), ExistingDeviceLink()
    for step in (
        lambda: new.confirmation_code,
        lambda: new.receive(b"x" * 40),
        lambda: existing.confirmation_code,
        lambda: existing.mailbox_id,
        lambda: existing.receive_hello(b"x" * 40),
        lambda: existing.refuse("no"),
    ):
        with pytest.raises(LinkStateError):
            step()
    with pytest.raises(ValueError, match="short code needs"):
        existing.start(new.invite(MAILBOX).to_short_code())
    existing.start(new.invite(MAILBOX))
    with pytest.raises(LinkStateError):
        existing.start(new.invite(MAILBOX))
    hello_chunks, _code = new.respond(existing.public_key, account.hello())
    with pytest.raises(LinkStateError):
        new.respond(existing.public_key, account.hello())
    with pytest.raises(LinkStateError, match="hello has not been opened"):
        existing.provision(account.provision(account.hello()))
    hello = existing.open_hello(hello_chunks)
    with pytest.raises(LinkStateError):
        existing.receive_hello(hello_chunks[0])
    chunks = existing.provision(account.provision(hello))
    with pytest.raises(LinkStateError):
        existing.provision(account.provision(hello))
    assert isinstance(new.open_provision(chunks), Provision)
    with pytest.raises(LinkStateError):
        new.open_provision(chunks)
    assert all(isinstance(LinkStateError("x"), cls) for cls in (LinkError, ProtocolError))


def test_no_key_shows_in_a_repr() -> None:
    account = Account()
    new, existing = NewDeviceLink(), ExistingDeviceLink()
    existing.start(new.invite(MAILBOX))
    hello_chunks, _code = new.respond(existing.public_key, account.hello())
    hello = existing.open_hello(hello_chunks)
    provision = account.provision(hello)
    keys = derive_link_keys(
        DhPrivateKey.generate(),
        existing.public_key,
        new_public_key=new.public_key,
        existing_public_key=existing.public_key,
    )
    secrets = [
        account.identity.to_bytes(),
        account.identity.signing_key.to_bytes(),
        keys.new_to_existing.raw,
        keys.existing_to_new.raw,
    ]
    opener = Opener(keys.new_to_existing, Direction.NEW_TO_EXISTING)
    for value in (new, existing, provision, keys, opener, hello):
        for text in (repr(value), str(value)):
            for secret in secrets:
                assert secret.hex() not in text and secret[:8].hex() not in text
            assert provision.relay_token not in text
    assert repr(provision).startswith("Provision(username='alice', device_id=2")


# ---- vectors ------------------------------------------------------------------------------


P = 2**255 - 19


def _x25519(scalar: bytes, u: bytes) -> bytes:
    """RFC 7748 §5, written from the RFC: the Montgomery ladder on Curve25519."""
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    n = int.from_bytes(k, "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (n >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        e = (aa - bb) % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb = d * a % P, c * b % P
        x3, z3 = (da + cb) ** 2 % P, x1 * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + 121665 * e) % P
    if swap:
        x2, x3, z2, z3 = x3, x2, z3, z2
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with SHA-256, written from the RFC."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _hex(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name])


def test_the_hand_written_x25519_matches_rfc7748() -> None:
    dh = RFC7748["diffie_hellman"]
    base = (9).to_bytes(32, "little")
    alice, bob = bytes.fromhex(dh["alice_private"]), bytes.fromhex(dh["bob_private"])
    assert _x25519(alice, base).hex() == dh["alice_public"]
    assert _x25519(alice, bytes.fromhex(dh["bob_public"])).hex() == dh["shared_secret"]
    for case in RFC7748["scalar_mult"]:
        assert (
            _x25519(bytes.fromhex(case["scalar"]), bytes.fromhex(case["u"])).hex()
            == (case["output"])
        )
    assert _x25519(bob, base).hex() == dh["bob_public"]


def test_the_vectors_are_reproduced_byte_for_byte() -> None:
    assert VECTORS_PATH.read_text() == json.dumps(deterministic(), indent=2) + "\n"


def test_the_key_schedule_follows_the_spec_by_hand() -> None:
    """§14 from the standard library alone: keys, codes and commitment."""
    new_private, existing_private = _hex("new_private"), _hex("existing_private")
    base = (9).to_bytes(32, "little")
    new_public, existing_public = _x25519(new_private, base), _x25519(existing_private, base)
    assert new_public == _hex("new_public") and existing_public == _hex("existing_public")
    shared = _x25519(new_private, existing_public)
    assert shared == _x25519(existing_private, new_public) == _hex("shared_secret")
    salt = new_public + existing_public
    assert salt == _hex("salt")
    keys = _hkdf(shared, salt, b"Cipherline link v1", 64)
    assert keys[:32] == _hex("key_new_to_existing")
    assert keys[32:] == _hex("key_existing_to_new")
    number = int.from_bytes(_hkdf(shared, salt, b"Cipherline link confirmation v1", 8), "big")
    digits = f"{number % 1_000_000:06d}"
    assert f"{digits[:3]} {digits[3:]}" == VECTORS["confirmation_code"]
    mailbox = VECTORS["mailbox_id"]
    digest = hashlib.sha256(
        b"Cipherline link commitment v1" + mailbox.encode() + new_public
    ).digest()
    short = mailbox + base64.b32encode(digest).decode()[:12]
    assert VECTORS["short_code"] == "-".join(short[i : i + 4] for i in range(0, 20, 4))
    key_text = base64.urlsafe_b64encode(new_public).decode().rstrip("=")
    assert VECTORS["qr_text"] == f"cipherline-link:1:{mailbox}:{key_text}"


def _open_by_hand(key: bytes, direction: int, chunks: list[bytes]) -> bytes:
    """§14's chunk layout with plain `cryptography` AES-GCM."""
    aead, body = AESGCM(key), b""
    for expected_index, chunk in enumerate(chunks):
        version, chunk_direction, index = struct.unpack(">BBI", chunk[:6])
        assert (version, chunk_direction, index) == (1, direction, expected_index)
        nonce = bytes(8) + struct.pack(">I", index)
        ad = b"Cipherline link v1" + struct.pack(">BI", direction, index)
        piece = aead.decrypt(nonce, chunk[6:], ad)
        assert piece[0] == (1 if expected_index == len(chunks) - 1 else 0)
        body += piece[1:]
    return body


def _text16(body: bytes, at: int) -> tuple[str, int]:
    (length,) = struct.unpack(">H", body[at : at + 2])
    return body[at + 2 : at + 2 + length].decode(), at + 2 + length


def _bytes16(body: bytes, at: int) -> tuple[bytes, int]:
    (length,) = struct.unpack(">H", body[at : at + 2])
    return body[at + 2 : at + 2 + length], at + 2 + length


def test_the_vector_chunks_open_by_hand_and_parse_as_documented() -> None:
    to_existing, to_new = _hex("key_new_to_existing"), _hex("key_existing_to_new")
    hello = VECTORS["hello"]
    body = _open_by_hand(to_existing, 1, [bytes.fromhex(c) for c in hello["chunks"]])
    assert body.hex() == hello["body"]
    assert body[:2] == b"\x01\x01"
    name, at = _text16(body, 2)
    identity, at = _bytes16(body, at)
    assert (name, identity.hex(), at) == (hello["device_name"], hello["device_identity"], len(body))

    vector = VECTORS["provision"]
    body = _open_by_hand(to_new, 2, [bytes.fromhex(c) for c in vector["chunks"]])
    assert body.hex() == vector["body"]
    assert body[:2] == b"\x02\x01"
    username, at = _text16(body, 2)
    (device_id,) = struct.unpack(">I", body[at : at + 4])
    token, at = _text16(body, at + 4)
    account, at = _bytes16(body, at)
    device_list, at = _bytes16(body, at)
    offer = body[at]
    (length,) = struct.unpack(">I", body[at + 1 : at + 5])
    sync_state = body[at + 5 :]
    assert len(sync_state) == length
    assert (username, device_id, token, offer) == (
        vector["username"],
        vector["device_id"],
        vector["relay_token"],
        1,
    )
    assert (account.hex(), device_list.hex(), sync_state.hex()) == (
        vector["account_identity"],
        vector["device_list"],
        vector["sync_state"],
    )

    refusal = VECTORS["refusal"]
    body = _open_by_hand(to_new, 2, [bytes.fromhex(c) for c in refusal["chunks"]])
    assert body[:2] == b"\x03\x01" and _text16(body, 2) == (refusal["reason"], len(body))


def test_the_vectors_open_through_the_api() -> None:
    new = NewDeviceLink(FixedRng(_hex("new_private")))
    existing = ExistingDeviceLink(FixedRng(_hex("existing_private")))
    invite = parse_link_code(VECTORS["qr_text"])
    assert isinstance(invite, LinkInvite) and invite == new.invite(VECTORS["mailbox_id"])
    short = parse_link_code(VECTORS["short_code"])
    assert isinstance(short, ShortCode) and short.matches(new.public_key)
    assert existing.start(short, mailbox_key=new.public_key) == _hex("existing_public")
    assert existing.confirmation_code == VECTORS["confirmation_code"]
    hello = existing.open_hello([bytes.fromhex(c) for c in VECTORS["hello"]["chunks"]])
    assert hello.device_identity.hex() == VECTORS["hello"]["device_identity"]
    chunks, code = new.respond(existing.public_key, hello)
    assert [c.hex() for c in chunks] == VECTORS["hello"]["chunks"]
    assert code == VECTORS["confirmation_code"]
    provision = new.open_provision([bytes.fromhex(c) for c in VECTORS["provision"]["chunks"]])
    assert isinstance(provision, Provision)
    assert provision.account().public.to_bytes().hex() == VECTORS["provision"]["account_public"]
    assert provision.sync_state.hex() == VECTORS["provision"]["sync_state"]


def test_the_large_vector_is_chunked_as_recorded_and_opens_by_hand() -> None:
    new = NewDeviceLink(FixedRng(_hex("new_private")))
    existing = ExistingDeviceLink(FixedRng(_hex("existing_private")))
    existing.start(new.invite(VECTORS["mailbox_id"]))
    vector_hello = DeviceHello(
        VECTORS["hello"]["device_name"], bytes.fromhex(VECTORS["hello"]["device_identity"])
    )
    hello_chunks, _code = new.respond(existing.public_key, vector_hello)
    hello = existing.open_hello(hello_chunks)
    sent = Provision(
        username=VECTORS["provision"]["username"],
        device_id=VECTORS["provision"]["device_id"],
        relay_token=VECTORS["provision"]["relay_token"],
        account_identity=bytes.fromhex(VECTORS["provision"]["account_identity"]),
        device_list=bytes.fromhex(VECTORS["provision"]["device_list"]),
        sync_state=large_sync_state(),
        history_offer=True,
    )
    assert existing.hello == hello
    chunks = existing.provision(sent)
    recorded = VECTORS["large_provision"]
    assert [len(c) for c in chunks] == recorded["chunk_lengths"]
    assert [hashlib.sha256(c).hexdigest() for c in chunks] == recorded["chunk_sha256"]
    body = _open_by_hand(_hex("key_existing_to_new"), 2, chunks)
    assert body.endswith(large_sync_state())
    assert new.open_provision(chunks) == sent
