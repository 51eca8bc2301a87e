"""The vault node's HTTP application."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from app import __version__
from vault_emulator.config import NodeConfig

log = logging.getLogger("vault")


def create_app(config: NodeConfig, *, insecure: bool) -> FastAPI:
    api = FastAPI(
        title="Cipherline Backup Key Vault (emulator)",
        version=__version__,
        description="OPAQUE-protected backup keys with an attempt limit.",
    )
    if insecure:
        log.warning("INSECURE: backend 'soft' keeps keys in software; for development only")

    @api.get("/health")
    def health() -> dict[str, object]:
        return {
            "status": "ok",
            "service": "vault",
            "version": __version__,
            "node": config.node_name,
            "backend": config.backend,
            "insecure": insecure,
        }

    return api
