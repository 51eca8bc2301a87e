"""History transfer's record batches, chunking, export and import (issue #19;
docs/protocol.md §14, "History transfer"), on real encrypted stores, no network."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.crypto import Argon2Params
from app.protocol.attachments import AttachmentSecret, encrypt_attachment
from app.protocol.errors import AuthenticationError, MalformedMessage
from app.services import history
from app.services.history import (
    HistoryAttachment,
    HistoryFormatError,
    HistoryRecord,
    decode_records,
    encode_records,
    export_chunk,
    import_records,
    open_chunk,
    seal_chunk,
)
from app.store import PassphraseProtector, Store

FAST = Argon2Params(time_cost=1, memory_cost_kib=8 * 1024, parallelism=1)
GROUP_ID = b"\x07" * 16


def _store(path: Path) -> Store:
    return Store.create(path, PassphraseProtector("history tests", FAST))


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    old, new = _store(tmp_path / "old"), _store(tmp_path / "new")
    yield old, new
    old.close()
    new.close()


def _group(store: Store) -> int:
    with store.transaction():
        conversation = store.conversations.create_group(GROUP_ID, "Trip", now=1)
        store.groups.create(GROUP_ID, conversation.id, "Trip")
        store.groups.set_members(GROUP_ID, ["bob", "carol"])
    return conversation.id


def _fill(store: Store, count: int) -> list[str]:
    """`count` messages over two direct chats and a group, some with a quote,
    reactions, an edit or an attachment pointer; returns their ids in row order."""
    group = _group(store)
    uuids = []
    with store.transaction():
        bob = store.conversations.direct("bob", now=1).id
        carol = store.conversations.direct("carol", now=1).id
        for number in range(count):
            chat = (bob, carol, group)[number % 3]
            outgoing = number % 2 == 0
            message = store.messages.add(
                conversation_id=chat,
                uuid=f"m-{number:05d}",
                sender="alice" if outgoing else ("bob" if chat != carol else "carol"),
                outgoing=outgoing,
                body=f"message {number} about the budget",
                sent_at=1_700_000_000_000 + number * 1000,
                status="read" if not outgoing else "delivered",
                kind="attachment" if number % 10 == 9 else "text",
                received_at=1_700_000_000_500 + number * 1000,
                quote=("m-00000", "alice", "message 0") if number % 7 == 6 else None,
            )
            if number % 5 == 4:
                store.messages.set_reactions(message.id, '{"bob": ["👍", 5]}')
            if number % 10 == 9:
                store.attachments.add(
                    message_id=message.id,
                    filename=f"photo {number}.jpg",
                    mime="image/jpeg",
                    size=12345,
                    key=bytes([number % 256]) * 32,
                    digest=bytes([1]) * 32,
                    blob_id=f"{number:032x}",
                    local_path=None,
                    state="ready",
                    caption="look",
                    thumbnail=b"\xff\xd8thumb",
                    thumbnail_width=64,
                    thumbnail_height=48,
                )
            uuids.append(message.uuid)
    return uuids


def _all(store: Store) -> list[tuple[object, ...]]:
    return list(
        store.execute(
            "SELECT c.kind, c.peer, c.group_id, m.uuid, m.sender, m.outgoing, m.kind, m.body,"
            " m.sent_at, m.received_at, m.status, m.quote_uuid, m.quote_text, m.reactions,"
            " a.filename, a.blob_id, a.key, a.digest, a.size, a.thumbnail, a.caption"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            " LEFT JOIN attachments a ON a.message_id = m.id ORDER BY m.uuid"
        ).fetchall()
    )


def _export_all(store: Store, limit: int) -> list[list[HistoryRecord]]:
    until = store.history.newest_message_id()
    chunks, after, more = [], 0, True
    while more:
        chunk = export_chunk(store, after, until, limit=limit)
        chunks.append(chunk.records)
        after, more = chunk.last_id, chunk.more
    return chunks


def test_a_history_moves_whole_in_numbered_chunks_and_twice_changes_nothing(
    stores: tuple[Store, Store],
) -> None:
    old, new = stores
    uuids = _fill(old, 53)
    chunks = _export_all(old, limit=10)
    assert [len(c) for c in chunks] == [10, 10, 10, 10, 10, 3]
    assert [r.uuid for c in chunks for r in c] == uuids  # oldest first, by row id

    _group(new)  # groups come with the account's sync state
    for records in chunks:
        sealed = seal_chunk(records)
        opened = open_chunk(sealed.blob, sealed.secret)
        assert opened == records
        assert import_records(new, opened, own_username="alice") == len(records)
    assert _all(new) == _all(old)
    # Old history does not look unread, and search finds it.
    assert all(c.unread == 0 for c in new.conversations.all())
    assert len(new.messages.search("budget", limit=100)) == 53
    chats = {c.title: c for c in new.conversations.all()}
    assert chats["bob"].last_activity == max(
        r.sent_at for c in chunks for r in c if r.peer == "bob"
    )
    # Imported again (a chunk replayed, or announced twice): nothing changes.
    before = _all(new)
    for records in chunks:
        assert import_records(new, records, own_username="alice") == 0
    assert _all(new) == before
    assert new.execute("SELECT COUNT(*) FROM messages_fts").fetchone()[0] == 53


def test_a_message_already_here_is_skipped_and_an_unknown_group_left_out(
    stores: tuple[Store, Store],
) -> None:
    old, new = stores
    _fill(old, 12)
    (records,) = _export_all(old, limit=100)
    with new.transaction():
        live = new.conversations.direct("bob", now=5)
        new.messages.add(
            conversation_id=live.id,
            uuid=records[0].uuid,
            sender="alice",
            outgoing=True,
            body="arrived live",
            sent_at=records[0].sent_at,
            status="sent",
        )
    # No group on the new device: its 4 messages have no chat to go to.
    assert import_records(new, records, own_username="alice") == 12 - 1 - 4
    assert new.messages.by_uuid(records[0].uuid).body == "arrived live"  # type: ignore[union-attr]
    assert new.conversations.by_group(GROUP_ID) is None


def test_a_chunk_is_cut_by_its_size_as_well(stores: tuple[Store, Store]) -> None:
    old, _new = stores
    _fill(old, 30)
    chunks = []
    until, after, more = old.history.newest_message_id(), 0, True
    while more:
        chunk = export_chunk(old, after, until, limit=1000, budget=600)
        chunks.append(chunk.records)
        after, more = chunk.last_id, chunk.more
    assert len(chunks) > 5
    assert sum(len(c) for c in chunks) == 30
    assert all(c for c in chunks)  # a record larger than the budget still travels


def test_an_empty_history_is_one_empty_last_chunk(stores: tuple[Store, Store]) -> None:
    old, _new = stores
    chunk = export_chunk(old, 0, old.history.newest_message_id())
    assert chunk.records == []
    assert not chunk.more


def _record(**changes: object) -> HistoryRecord:
    base: dict[str, object] = {
        "peer": "bob",
        "group_id": None,
        "uuid": "u-1",
        "sender": "bob",
        "outgoing": False,
        "kind": "attachment",
        "body": "photo.jpg",
        "sent_at": 1_700_000_000_000,
        "received_at": 1_700_000_000_100,
        "status": "read",
        "expires_at": 1_800_000_000_000,
        "edited_at": None,
        "quote": ("u-0", "alice", "hello"),
        "reactions": '{"alice": ["❤️", 3]}',
        "attachment": HistoryAttachment(
            "photo.jpg", "image/jpeg", 9, "ab" * 16, b"k" * 32, b"d" * 32, "cap", b"png", 2, 3
        ),
    }
    base.update(changes)
    return HistoryRecord(**base)  # type: ignore[arg-type]


def test_records_round_trip_every_field() -> None:
    records = [
        _record(),
        _record(peer=None, group_id=GROUP_ID, uuid="u-2", attachment=None, quote=None),
        _record(uuid="u-3", kind="text", reactions=None, received_at=None, edited_at=7),
    ]
    assert decode_records(encode_records(records)) == records


@pytest.mark.parametrize(
    "mangle",
    [
        lambda data: data[:-1],  # cut
        lambda data: data + b"\x00",  # trailing bytes
        lambda data: b"\x02" + data[1:],  # another version
        lambda data: data[:5] + b"\x03" + data[6:],  # a chat of an unknown kind
        lambda data: data[:1] + struct.pack(">I", 10**6) + data[5:],  # too many
    ],
    ids=["truncated", "trailing", "version", "chat-kind", "count"],
)
def test_a_malformed_batch_is_a_typed_error(mangle: object) -> None:
    data = encode_records([_record()])
    with pytest.raises(HistoryFormatError):
        decode_records(mangle(data))  # type: ignore[operator]


def test_an_unknown_status_or_flag_is_refused() -> None:
    with pytest.raises(HistoryFormatError):
        decode_records(encode_records([_record(status="shredded")]))
    data = bytearray(encode_records([_record(attachment=None, quote=None, reactions=None)]))
    flags_at = 5 + 1 + 2 + 3 + 2 + 3 + 2 + 3  # format, count, chat, uuid, sender
    assert data[flags_at] == 0
    data[flags_at] = 0x10
    with pytest.raises(HistoryFormatError):
        decode_records(bytes(data))


def test_a_chunk_opens_only_under_its_key_and_a_bomb_is_refused(
    stores: tuple[Store, Store],
) -> None:
    _old, new = stores
    sealed = seal_chunk([_record()])
    wrong = AttachmentSecret(b"\x00" * 32, sealed.secret.digest, sealed.secret.size)
    with pytest.raises(AuthenticationError):
        open_chunk(sealed.blob, wrong)
    altered = sealed.blob[:-1] + bytes([sealed.blob[-1] ^ 1])
    with pytest.raises(AuthenticationError):
        open_chunk(altered, sealed.secret)

    # Properly encrypted, but what it decompresses to is not a batch, or is huge.
    def sealed_bytes(data: bytes) -> tuple[bytes, AttachmentSecret]:
        target = io.BytesIO()
        secret = encrypt_attachment(io.BytesIO(data), target)
        return target.getvalue(), secret

    bomb = zlib.compress(b"\x00" * (history.MAX_CHUNK_PLAINTEXT + 1), 9)
    for data in (b"not zlib", zlib.compress(b"\x01junk"), bomb, zlib.compress(b"x") + b"pad"):
        blob, secret = sealed_bytes(data)
        with pytest.raises(HistoryFormatError):
            open_chunk(blob, secret)
    # A refused chunk imports nothing: the error comes before the store is touched.
    assert new.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0
    assert issubclass(HistoryFormatError, MalformedMessage)


def test_a_download_past_the_announced_size_is_cut_off() -> None:
    buffer = history.BoundedBuffer(history.sealed_size_bound(10))
    buffer.write(b"x" * history.sealed_size_bound(10))
    with pytest.raises(HistoryFormatError):
        buffer.write(b"x")


def test_an_outgoing_transfer_is_kept_and_resumed(stores: tuple[Store, Store]) -> None:
    old, _new = stores
    _fill(old, 20)
    transfer = history.begin_transfer(old, 2)
    assert (transfer.total, transfer.next_index, transfer.finished) == (20, 0, False)
    chunk = export_chunk(old, transfer.after_id, transfer.until_id, limit=8)
    with old.transaction():
        history.save_outgoing(old, transfer.advanced(chunk))
    _fill_more = old.messages.add(
        conversation_id=old.conversations.by_peer("bob").id,  # type: ignore[union-attr]
        uuid="after-the-start",
        sender="bob",
        outgoing=False,
        body="new",
        sent_at=1,
        status="received",
    )
    resumed = history.begin_transfer(old, 2)
    assert (resumed.transfer_id, resumed.next_index, resumed.done) == (transfer.transfer_id, 1, 8)
    rest = export_chunk(old, resumed.after_id, resumed.until_id, limit=100)
    assert len(rest.records) == 12  # what arrived after the start is not history
    assert _fill_more.uuid not in {r.uuid for r in rest.records}
    assert history.begin_transfer(old, 3).transfer_id != transfer.transfer_id
