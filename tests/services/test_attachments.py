"""Attachments with a caption and a thumbnail, through a real relay (issue #24;
docs/protocol.md §5, type 11): the thumbnail arrives before the file, large files
wait for a click, and neither the picture nor its thumbnail is ever a plaintext
file anywhere in either profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.services.messenger import AUTO_DOWNLOAD_BYTES
from app.services.views import AttachmentView, MessageView, Thumbnail
from tests.services.helpers import Person, wait_for
from tests.support.components import RelayProcess

PICTURE_MARKER = b"PICTURE-PLAINTEXT-MARKER-7f3a"
THUMBNAIL_MARKER = b"THUMBNAIL-PLAINTEXT-MARKER-c41d"
CAPTION = "sunset over the harbour"


@pytest.fixture
def people(tmp_path: Path, relay: RelayProcess) -> dict[str, Person]:
    people = {name: Person(tmp_path, name, relay) for name in ("alice", "bob")}
    yield people  # type: ignore[misc]
    for person in people.values():
        person.stop()


def _attachment_message(person: Person) -> MessageView | None:
    conversations = person.client.conversations().result(20)
    if not conversations:
        return None
    _view, messages = person.client.open_conversation(conversations[0].conversation_id).result(20)
    found = [m for m in messages if m.attachment is not None]
    return found[0] if found else None


def _ready(person: Person) -> bool:
    message = _attachment_message(person)
    return message is not None and message.attachment is not None and message.attachment.ready


def _raw_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


def test_an_image_arrives_with_caption_and_thumbnail_before_its_download(
    people: dict[str, Person], tmp_path: Path
) -> None:
    alice, bob = people["alice"], people["bob"]
    conversation = alice.client.start_direct("bob").result(20)
    picture = tmp_path / "outbox" / "harbour.jpg"
    picture.parent.mkdir()
    # Over the auto-download limit, so it waits for a click: the thumbnail must
    # be all bob has until then.
    picture.write_bytes(PICTURE_MARKER * (AUTO_DOWNLOAD_BYTES // len(PICTURE_MARKER) + 10))
    thumbnail = Thumbnail(b"\xff\xd8\xff\xe0" + THUMBNAIL_MARKER * 40, 256, 171)
    sent = alice.client.send_file(
        conversation.conversation_id, picture, caption=CAPTION, thumbnail=thumbnail
    ).result(60)
    assert sent.body == CAPTION
    assert sent.attachment is not None and sent.attachment.thumbnail == thumbnail

    wait_for(lambda: _attachment_message(bob), timeout=30, what="bob gets the image")
    arrived = _attachment_message(bob)
    assert arrived is not None
    attachment = arrived.attachment
    assert isinstance(attachment, AttachmentView)
    assert arrived.body == CAPTION
    assert attachment.filename == "harbour.jpg" and attachment.mime == "image/jpeg"
    assert attachment.thumbnail == thumbnail
    assert not attachment.ready and attachment.on_request
    assert not any(
        path.suffix == ".enc" for path in (bob.profile.path / "attachments").iterdir()
    ), "nothing is fetched before the click"

    # The click fetches it; then it is ready and saves to the same bytes.
    assert bob.client.download_attachment(attachment.attachment_id).result(20)
    wait_for(lambda: _ready(bob), timeout=60, what="bob downloads the image")
    ready = _attachment_message(bob)
    assert ready is not None
    assert ready.attachment is not None and ready.attachment.thumbnail == thumbnail
    assert not bob.client.download_attachment(attachment.attachment_id).result(20)
    shown = bob.client.read_attachment(attachment.attachment_id).result(30)
    assert shown == picture.read_bytes()

    # Neither profile holds the picture or the thumbnail in plaintext anywhere
    # (store, its WAL, attachments, keys): only the outbox file alice picked does.
    for person in (alice, bob):
        for path in _raw_files(person.profile.path):
            raw = path.read_bytes()
            assert PICTURE_MARKER not in raw, path
            assert THUMBNAIL_MARKER not in raw, path
            assert CAPTION.encode() not in raw, path


def test_a_small_file_downloads_at_once_with_its_caption(
    people: dict[str, Person], tmp_path: Path
) -> None:
    alice, bob = people["alice"], people["bob"]
    conversation = alice.client.start_direct("bob").result(20)
    document = tmp_path / "notes.txt"
    document.write_bytes(b"short notes " * 100)
    alice.client.send_file(conversation.conversation_id, document, caption="read me").result(30)
    wait_for(lambda: _ready(bob), timeout=30, what="bob fetches the small file unasked")
    ready = _attachment_message(bob)
    assert ready is not None
    assert ready.body == "read me"
    assert ready.attachment is not None and ready.attachment.thumbnail is None
    assert not ready.attachment.on_request
