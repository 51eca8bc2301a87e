"""Linking a second computer through the relay's link mailbox (issue #19;
docs/protocol.md §14): with the QR data and with the typed short code, a refusal,
and a relay that tries to finish a link on its own.

Real relay and clients; each side's blocking steps run on a thread of their own,
as the dialogs' workers run them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from app.crypto import DhPrivateKey
from app.protocol.linking import LinkInvite
from app.services.linking import ExistingDeviceLinking, NewDeviceLinking
from app.services.messenger import ServiceError
from tests.services.helpers import FAST_KDF, Person, make_profile, on_core, texts, wait_for
from tests.support.components import RelayProcess

T = TypeVar("T")


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as executor:
        yield executor


def _in(pool: ThreadPoolExecutor, step: Callable[[], T]) -> Future[T]:
    return pool.submit(step)


def _link(
    people: dict[str, Person],
    tmp_path: Path,
    relay: RelayProcess,
    pool: ThreadPoolExecutor,
    *,
    typed: bool,
) -> Person:
    alice = people["alice"]
    new = NewDeviceLinking(make_profile(tmp_path, "alice-desktop", relay), "Desktop")
    request = new.open()
    existing = ExistingDeviceLinking(alice.client, alice.profile.relay())
    existing.start(request.short_code if typed else request.qr_text)
    new_code = _in(pool, new.wait_for_existing_device)
    name, existing_code = existing.wait_for_new_device()
    assert name == "Desktop"
    assert new_code.result(timeout=30) == existing_code  # both screens show the same
    approval = _in(pool, new.wait_for_approval)
    existing.approve()
    provision = approval.result(timeout=30)
    assert provision.username == "alice"
    messenger = new.finish("desktop passphrase", kdf=FAST_KDF)
    desktop = Person(tmp_path, "alice", relay, linked=(new.profile, messenger))
    people["alice-desktop"] = desktop
    return desktop


@pytest.mark.parametrize("typed", [False, True], ids=["qr", "short-code"])
def test_a_linked_computer_gets_the_account_and_its_messages(
    people: dict[str, Person],
    tmp_path: Path,
    relay: RelayProcess,
    pool: ThreadPoolExecutor,
    typed: bool,
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hello").result(20)
    wait_for(lambda: texts(bob, "alice") == ["hello"], what="bob receives")
    on_core(alice, lambda: alice.client.messenger.set_verified("bob", True))

    desktop = _link(people, tmp_path, relay, pool, typed=typed)
    # The account's contacts and their verification came along; one safety number.
    assert desktop.client.safety_number("bob").result().verified
    assert (
        desktop.client.safety_number("bob").result().digits
        == bob.client.safety_number("alice").result().digits
    )
    bob_chat = next(c for c in bob.client.conversations().result() if c.title == "alice")
    bob.client.send_text(bob_chat.conversation_id, "to every alice").result(20)
    wait_for(lambda: "to every alice" in texts(desktop, "bob"), what="the desktop receives")
    wait_for(lambda: "to every alice" in texts(alice, "bob"), what="the laptop receives")
    # The relay saw the device's name sealed, never in the clear.
    listed = alice.client.devices().result()
    assert sorted(str(d["name"]) for d in listed) == ["Desktop", "laptop"]


def test_a_declined_link_gives_the_new_computer_nothing(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess, pool: ThreadPoolExecutor
) -> None:
    alice = people["alice"]
    before = on_core(alice, alice.client.messenger.own_device_list)
    new = NewDeviceLinking(make_profile(tmp_path, "alice-desktop", relay), "Desktop")
    request = new.open()
    existing = ExistingDeviceLinking(alice.client, alice.profile.relay())
    existing.start(request.qr_text)
    _in(pool, new.wait_for_existing_device)
    existing.wait_for_new_device()
    approval = _in(pool, new.wait_for_approval)
    existing.refuse()
    with pytest.raises(ServiceError, match="declined"):
        approval.result(timeout=30)
    new.close()
    assert on_core(alice, alice.client.messenger.own_device_list) == before
    assert not (new.profile.path / "store.db").exists()


def test_the_relay_cannot_finish_a_link_by_itself(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess, pool: ThreadPoolExecutor
) -> None:
    """The relay knows the new device's public key and can answer as "the existing
    device" with a key of its own: the new device then shows a code no device of
    the account shows, and what the relay sends as a provision opens only as an
    account the relay made up, never Alice's (it has not her account identity)."""
    alice = people["alice"]
    before = on_core(alice, alice.client.messenger.own_device_list)
    new = NewDeviceLinking(make_profile(tmp_path, "alice-desktop", relay), "Desktop")
    request = new.open()
    mailbox_id = request.qr_text.split(":")[2]
    relay_key = DhPrivateKey.generate()
    operator = alice.profile.relay()
    operator.post_link_message(mailbox_id, "existing", relay_key.public_key().to_bytes())
    code = new.wait_for_existing_device()
    assert len(code.replace(" ", "")) == 6
    # Anything the relay makes up as the provision does not open under the link
    # keys it would need the new device's private key to derive.
    operator.post_link_message(mailbox_id, "existing", b"\x01" * 200)
    with pytest.raises(ServiceError, match="could not be verified"):
        new.wait_for_approval()
    new.close()
    operator.close()
    assert on_core(alice, alice.client.messenger.own_device_list) == before
    assert not (new.profile.path / "store.db").exists()


def test_a_mistyped_code_is_refused_with_a_sentence(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> None:
    alice = people["alice"]
    new = NewDeviceLinking(make_profile(tmp_path, "alice-desktop", relay), "Desktop")
    request = new.open()
    existing = ExistingDeviceLinking(alice.client, alice.profile.relay())
    typo = request.short_code[:-1] + ("A" if request.short_code[-1] != "A" else "B")
    with pytest.raises(ServiceError) as refused:
        existing.start(typo)
    assert str(refused.value).endswith(".")
    gone = LinkInvite("ABCDEFGH", bytes(32))
    with pytest.raises(ServiceError):
        ExistingDeviceLinking(alice.client, alice.profile.relay()).start(gone.short_code())
    new.close()
