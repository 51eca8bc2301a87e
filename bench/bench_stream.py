"""STREAM-sealed data (attachments, backups) against raw AES-256-GCM on the same buffers."""

from __future__ import annotations

from app.crypto import AeadKey, ReusableAead, StreamSealer, random_bytes
from bench.harness import BenchReport, Comparison, rate

SEGMENT = 64 * 1024


def run(quick: bool) -> BenchReport:
    report = BenchReport("stream", quick)
    total = (2 if quick else 64) * 1024 * 1024
    segments = total // SEGMENT
    plaintext = random_bytes(SEGMENT)
    key = AeadKey.generate()
    nonce = random_bytes(12)
    raw = ReusableAead(key)

    def raw_pass() -> None:
        for _ in range(segments):
            raw.seal(nonce, plaintext, b"")

    def stream_pass() -> None:
        sealer = StreamSealer(key, random_bytes(7), b"header")
        for index in range(segments):
            sealer.seal(plaintext, last=index == segments - 1)

    seconds = 0.3 if quick else 3.0
    mb = total / 1e6
    raw_mbps = rate(raw_pass, min_seconds=seconds) * mb
    stream_mbps = rate(stream_pass, min_seconds=seconds) * mb
    report.comparisons.append(
        Comparison(
            "STREAM seal, 64 KiB segments",
            stream_mbps,
            raw_mbps,
            "MB/s",
            "raw AES-256-GCM",
            target=0.9,
        )
    )
    return report
