"""GET /v1/models, GET /v1/models/{model}, GET /health."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": request.app.state.chatapi.registry.list_models()}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> dict:
    return request.app.state.chatapi.registry.get_model(model)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    engine = request.app.state.chatapi.engine
    if not engine.alive:
        return JSONResponse({"status": "error", "engine": "dead"}, status_code=503)
    return JSONResponse({"status": "ok", "running": len(engine.scheduler.running),
                         "waiting": engine.scheduler.num_waiting})
