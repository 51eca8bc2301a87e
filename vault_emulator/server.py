# No `from __future__ import annotations`: FastAPI reads route annotations at import.
"""The vault node's HTTP face: opaque bytes in, opaque bytes out."""

import asyncio
import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from vault_emulator.config import NodeConfig
from vault_emulator.node import VaultNode

log = logging.getLogger("vault")


def create_app(
    config: NodeConfig, node: VaultNode, *, insecure: bool, echo: bool = False
) -> FastAPI:
    api = FastAPI(
        title="Cipherline Backup Key Vault (emulator)",
        version=__version__,
        description="OPAQUE-protected backup keys with an attempt limit.",
    )
    if insecure:
        log.warning("INSECURE: backend 'soft' keeps keys in software; for development only")

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @api.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.error("unexpected %s", type(error).__name__)
        return JSONResponse({"error": "the vault node hit an internal error"}, status_code=500)

    @api.get("/health")
    def health() -> JSONResponse:
        if node.halted:
            # Loud for monitoring: this node found its storage rolled back.
            return JSONResponse({"status": "halted", "halted": node.halted}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "service": "vault",
                "version": __version__,
                "node": config.node_name,
                "backend": config.backend,
                "insecure": insecure,
            }
        )

    @api.get("/v1/vault/fleet")
    def fleet() -> Response:
        return Response(node.fleet_bundle(), media_type="application/octet-stream")

    @api.post("/v1/vault/{op}")
    async def call(op: str, request: Request) -> Response:
        body = await request.body()
        status, answer = await asyncio.to_thread(node.handle, op, body)
        media = "application/octet-stream" if status == 200 else "application/json"
        log.info(json.dumps({"op": op, "status": status}))
        return Response(answer, status_code=status, media_type=media)

    if echo:
        # The benchmark's limit: the same server, route shape, thread hop and log
        # line as a vault call, with none of the vault's work.
        @api.post("/v1/echo/{op}")
        async def echo_call(op: str, request: Request) -> Response:
            body = await request.body()
            answer = await asyncio.to_thread(bytes, body)
            log.info(json.dumps({"op": op, "status": 200}))
            return Response(answer, media_type="application/octet-stream")

    return api
