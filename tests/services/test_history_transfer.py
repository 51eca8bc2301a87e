"""History that follows a linked device (issue #19; docs/protocol.md §14, "History
transfer"): Alice's laptop sends its history to the phone she links, through a
real relay that is SIGKILLed halfway and restarted; the transfer resumes and every
message arrives once, in its chat, not unread. A relay replaying what it carried
changes nothing, a "history chunk" from a contact is dropped, and attachments
arrive as pointers the phone downloads on demand."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from app.protocol.content import HistoryChunk, encode_content
from app.services.account import open_messenger
from app.services.client import Client, HistoryTransferCancelled
from app.services.events import HistoryProgress
from app.services.linking import ExistingDeviceLinking, NewDeviceLinking
from tests.services.helpers import (
    FAST_KDF,
    Person,
    chat_id,
    make_profile,
    on_core,
    texts,
    wait_for,
    write_old_history,
)
from tests.support.components import RelayProcess
from tests.support.mailbox_adversary import RecordingMailbox

HISTORY = 3_000
CHUNK = 250
HISTORY_QUERY = (
    "SELECT m.uuid, c.kind, COALESCE(c.peer, hex(c.group_id)) FROM messages m"
    " JOIN conversations c ON c.id = m.conversation_id"
)


def _fill(alice: Person, count: int) -> None:
    """A long history in the laptop's store: a direct chat with Bob, one with a
    stranger, and a group."""
    write_old_history(alice, [("bob", "bob"), ("dave", "dave"), ("Trip", "bob")], count)


def _history(person: Person, *, system: bool = True) -> dict[str, tuple[str, str]]:
    """Every message's id and chat (the system notices too, unless not `system`)."""
    store = person.client.messenger.store
    where = "" if system else " WHERE m.kind != 'system'"
    rows = on_core(person, lambda: store.execute(HISTORY_QUERY + where).fetchall())
    return {str(r[0]): (str(r[1]), str(r[2])) for r in rows}


def _progress(person: Person) -> list[HistoryProgress]:
    return [e for e in list(person.events) if isinstance(e, HistoryProgress) and not e.sending]


def test_history_follows_a_linked_device_through_a_relay_crash(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess, mailbox: RecordingMailbox
) -> None:
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    alice.client.send_text(chat.conversation_id, "hello bob").result(20)
    wait_for(lambda: texts(bob, "alice") == ["hello bob"], what="bob receives")
    bob.client.accept_request(chat_id(bob, "alice")).result(20)
    alice.client.create_group("Trip", ["bob"]).result(20)
    picture = tmp_path / "harbour.png"
    picture.write_bytes(b"\x89PNG harbour at dusk " * 500)
    alice.client.send_file(chat.conversation_id, picture).result(30)
    _fill(alice, HISTORY)
    assert len(_history(alice, system=False)) == HISTORY + 2

    phone = alice.add_device(tmp_path, relay)
    people["alice-phone"] = phone
    # Everything the laptop holds as the transfer starts, its notices included
    # ("you created the group", "you linked a device").
    expected = _history(alice)
    device_id = phone.client.messenger.device_id
    halfway, crashed = threading.Event(), threading.Event()
    seen: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        if done >= 4 * CHUNK and not halfway.is_set():
            halfway.set()
            crashed.wait(30)  # the next upload meets a dead relay

    sending = alice.client.transfer_history(device_id, progress=progress, chunk_messages=CHUNK)
    assert halfway.wait(60), "the transfer never got halfway"
    relay.kill()
    crashed.set()
    time.sleep(1.5)
    relay.start()
    assert sending.result(timeout=120) == len(expected)
    assert seen[0] == (0, len(expected))
    # Resumed after the crash, not started over: each chunk was sent once.
    assert [done for done, _total in seen] == sorted({done for done, _total in seen})
    assert seen[-1] == (len(expected), len(expected))
    wait_for(
        lambda: any(p.finished for p in _progress(phone)), timeout=120, what="the phone finishes"
    )

    # Every message once (message ids are unique in a store), in its chat; none
    # of it unread. The phone holds nothing else but notices of its own.
    arrived = _history(phone)
    assert {k: v for k, v in arrived.items() if k in expected} == expected
    assert _history(phone, system=False) == _history(alice, system=False)
    assert all(c.unread == 0 for c in phone.client.conversations().result(20))
    reports = _progress(phone)
    assert [p.done_messages for p in reports] == sorted(p.done_messages for p in reports)
    assert reports[-1] == HistoryProgress(len(expected), len(expected), True)
    assert phone.client.search("harbour").result(20)  # indexed for search
    # The laptop's side says the same, and asking again sends nothing more.
    assert alice.client.history_progress(sending=True).result(20) == HistoryProgress(
        len(expected), len(expected), True, True
    )
    assert alice.client.transfer_history(device_id).result(20) == len(expected)

    # The relay replays everything it carried to the phone: nothing changes.
    for envelope in mailbox.recorded(recipient="alice"):
        if envelope.device_id == device_id:
            mailbox.replay(envelope)
    bob.client.send_text(chat_id(bob, "alice"), "after the replays").result(20)
    wait_for(lambda: "after the replays" in texts(phone, "bob"), what="the phone hears bob")
    time.sleep(1)
    after = _history(phone)
    assert {k: after[k] for k in arrived} == arrived
    assert len(_history(phone, system=False)) == HISTORY + 3

    # A "history chunk" from a contact, not one of Alice's devices: dropped.
    forged = HistoryChunk(b"\x42" * 16, 0, True, 1, 1, "ab" * 16, b"k" * 32, b"d" * 32, 10)
    bob_messenger = bob.client.messenger
    on_core(bob, lambda: bob_messenger._encrypt_for("alice", encode_content(forged), None))
    bob.client.request_flush()
    bob.client.send_text(chat_id(bob, "alice"), "after the forgery").result(20)
    wait_for(lambda: "after the forgery" in texts(phone, "bob"), what="the phone hears bob")
    phone_store = phone.client.messenger.store
    assert on_core(phone, lambda: phone_store.history.get(b"\x42" * 16, 0)) is None

    # The picture came as a pointer: fetched when clicked, the same bytes.
    _view, messages = phone.client.open_conversation(chat_id(phone, "bob")).result(20)
    pointer = next(m for m in messages if m.attachment is not None).attachment
    assert pointer is not None
    assert not pointer.ready
    assert pointer.filename == "harbour.png"
    assert phone.client.download_attachment(pointer.attachment_id).result(20)

    def fetched() -> bool:
        _v, shown = phone.client.open_conversation(chat_id(phone, "bob")).result(20)
        found = next(m for m in shown if m.attachment is not None).attachment
        return found is not None and found.ready

    wait_for(fetched, timeout=30, what="the phone fetches the picture")
    assert phone.client.read_attachment(pointer.attachment_id).result(20) == picture.read_bytes()


def test_approving_with_history_offers_it_and_sends_it(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> None:
    """The link dialogs' path: the existing device approves with its history, the
    new one is told in the provision and shows progress from its client's events."""
    alice, bob = people["alice"], people["bob"]
    chat = alice.client.start_direct("bob").result(20)
    for number in range(5):
        alice.client.send_text(chat.conversation_id, f"before the link {number}").result(20)
    wait_for(lambda: len(texts(bob, "alice")) == 5, what="bob receives")

    new = NewDeviceLinking(make_profile(tmp_path, "alice-desktop", relay), "Desktop")
    request = new.open()
    existing = ExistingDeviceLinking(alice.client, alice.profile.relay())
    existing.start(request.qr_text)
    with ThreadPoolExecutor(max_workers=1) as pool:
        new_code = pool.submit(new.wait_for_existing_device)
        _name, code = existing.wait_for_new_device()
        assert new_code.result(timeout=30) == code
        approval = pool.submit(new.wait_for_approval)
        existing.approve(transfer_history=True)
        assert approval.result(timeout=30).history_offer
    assert new.history_offered
    messenger = new.finish("desktop passphrase", kdf=FAST_KDF)
    desktop = Person(tmp_path, "alice", relay, linked=(new.profile, messenger))
    people["alice-desktop"] = desktop
    assert existing.history_transfer is not None
    assert existing.history_transfer.result(timeout=60) == len(_history(alice))
    wait_for(
        lambda: any(p.finished for p in _progress(desktop)), timeout=60, what="history arrives"
    )
    assert texts(desktop, "bob") == [f"before the link {n}" for n in range(5)]
    assert desktop.client.history_progress().result(20) == _progress(desktop)[-1]


def _restart(person: Person) -> None:
    """Stops the client and opens the same profile again, as a relaunch does."""
    person.stop()
    messenger = open_messenger(person.profile, f"{person.name} passphrase")
    person.client = Client(messenger, person.profile.relay(timeout=3), tick_seconds=0.2)
    person.client.set_listener(person.events.append)
    person.client.start()


def test_a_cancelled_transfer_resumes_when_asked_and_a_closed_app_by_itself(
    people: dict[str, Person], tmp_path: Path, relay: RelayProcess
) -> None:
    alice = people["alice"]
    alice.client.start_direct("bob").result(20)
    alice.client.create_group("Trip", ["bob"]).result(20)
    _fill(alice, 1_200)
    phone = alice.add_device(tmp_path, relay)
    people["alice-phone"] = phone
    expected = _history(alice)
    device_id = phone.client.messenger.device_id

    def cancel_after_two(done: int, _total: int) -> None:
        if done >= 2 * 100:
            alice.client.cancel_history_transfer()

    first = alice.client.transfer_history(device_id, progress=cancel_after_two, chunk_messages=100)
    with pytest.raises(HistoryTransferCancelled):
        first.result(timeout=60)
    stopped_at = alice.client.history_progress(sending=True).result(20)
    assert stopped_at is not None
    assert 200 <= stopped_at.done_messages < len(expected)
    assert not stopped_at.finished
    assert stopped_at.stopped  # not shown as running (Settings → Devices)
    # Cancelled by the user: a restart does not resume it unasked.
    _restart(alice)
    time.sleep(1)
    assert alice.client.history_progress(sending=True).result(20) == stopped_at

    # Asked again, it resumes where it stopped; then the app closes halfway and,
    # opened again, finishes by itself.
    half = threading.Event()
    resumed: list[int] = []

    def close_at_the_half(done: int, _total: int) -> None:
        resumed.append(done)
        if done >= len(expected) // 2 and not half.is_set():
            half.set()
            time.sleep(0.5)  # the app is being closed meanwhile

    second = alice.client.transfer_history(
        device_id, progress=close_at_the_half, chunk_messages=100
    )
    assert half.wait(60)
    _restart(alice)
    with pytest.raises(HistoryTransferCancelled):
        second.result(timeout=60)
    assert resumed[0] == stopped_at.done_messages
    assert resumed[-1] < len(expected)  # closed before the end
    wait_for(
        lambda: any(p.finished for p in _progress(phone)), timeout=60, what="the phone finishes"
    )
    after = _history(phone)
    assert {k: after[k] for k in expected} == expected
    assert alice.client.history_progress(sending=True).result(20) == HistoryProgress(
        len(expected), len(expected), True, True
    )
