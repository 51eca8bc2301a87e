"""The relay's HTTP application."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from app import __version__


@dataclass(frozen=True)
class RelaySettings:
    data_dir: Path
    database_url: str | None = None
    vault_urls: tuple[str, ...] = ()


def create_app(settings: RelaySettings) -> FastAPI:
    api = FastAPI(
        title="Cipherline relay",
        version=__version__,
        description="Store-and-forward of end-to-end encrypted envelopes.",
    )

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "service": "relay", "version": __version__}

    return api
