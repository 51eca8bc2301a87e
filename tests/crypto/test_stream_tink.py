"""Our STREAM construction against Google Tink's AES-GCM-HKDF streaming AEAD.

Tink (an implementation we did not write) uses the same segment nonces,
prefix || segment number || last-segment flag. Framed the Tink way (its header,
its HKDF-derived segment key, its first-segment offset), our StreamSealer and
StreamOpener must read Tink's ciphertexts and write ones Tink accepts, and the
final-segment flag must matter in both.
"""

from __future__ import annotations

import io
import os
import warnings

import pytest
import tink
from tink import proto_keyset_format, secret_key_access, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

from app.crypto import AeadKey, StreamError, StreamOpener, StreamSealer, hkdf_sha256

TAG = 16
SEGMENT = 4096
AD = b"cipherline interop"


class _Keep(io.BytesIO):
    """Tink closes the stream it writes to; keep the bytes."""

    def close(self) -> None:
        self.kept = self.getvalue()


def _tink() -> tuple[streaming_aead.StreamingAead, bytes]:
    streaming_aead.register()
    with warnings.catch_warnings():
        # Deprecated only in favour of fixed templates, none with a small segment size.
        warnings.simplefilter("ignore", DeprecationWarning)
        templates = streaming_aead.streaming_aead_key_templates
        template = templates.create_aes_gcm_hkdf_streaming_key_template(
            32, common_pb2.HashType.SHA256, 32, SEGMENT
        )
    handle = tink.new_keyset_handle(template)
    keyset = tink_pb2.Keyset.FromString(
        proto_keyset_format.serialize(handle, secret_key_access.TOKEN)
    )
    key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey.FromString(keyset.key[0].key_data.value)
    return handle.primitive(streaming_aead.StreamingAead), key.key_value


def _segments(body: bytes, header_length: int) -> list[bytes]:
    first = SEGMENT - header_length
    pieces = [body[:first]]
    pieces += [body[i : i + SEGMENT] for i in range(first, len(body), SEGMENT)]
    return [p for p in pieces if p] or [b""]


@pytest.mark.parametrize("size", [0, 1, 4096 - 16 - 40, 4096 * 5 + 123])
def test_we_read_what_tink_wrote(size: int) -> None:
    primitive, key = _tink()
    plaintext = os.urandom(size)
    sink = _Keep()
    with primitive.new_encrypting_stream(sink, AD) as stream:
        stream.write(plaintext)
    data = sink.kept
    header_length = data[0]
    salt, prefix = data[1 : header_length - 7], data[header_length - 7 : header_length]
    opener = StreamOpener(AeadKey(hkdf_sha256(key, salt=salt, info=AD, length=32)), prefix, b"")
    segments = _segments(data[header_length:], header_length)
    recovered = b"".join(
        opener.open(segment, last=index == len(segments) - 1)
        for index, segment in enumerate(segments)
    )
    assert recovered == plaintext
    assert opener.finished
    # The last-segment flag is part of the nonce in both implementations.
    if len(segments) > 1:
        fresh = StreamOpener(AeadKey(hkdf_sha256(key, salt=salt, info=AD, length=32)), prefix, b"")
        with pytest.raises(StreamError):
            fresh.open(segments[0], last=True)


def test_tink_reads_what_we_wrote() -> None:
    primitive, key = _tink()
    plaintext = os.urandom(SEGMENT * 3 + 777)
    salt, prefix = os.urandom(32), os.urandom(7)
    header = bytes([1 + 32 + 7]) + salt + prefix
    sealer = StreamSealer(AeadKey(hkdf_sha256(key, salt=salt, info=AD, length=32)), prefix, b"")
    first = SEGMENT - len(header) - TAG
    pieces = [plaintext[:first]]
    pieces += [
        plaintext[i : i + SEGMENT - TAG] for i in range(first, len(plaintext), SEGMENT - TAG)
    ]
    body = b"".join(
        sealer.seal(piece, last=index == len(pieces) - 1) for index, piece in enumerate(pieces)
    )
    with primitive.new_decrypting_stream(io.BytesIO(header + body), AD) as stream:
        assert stream.read() == plaintext
