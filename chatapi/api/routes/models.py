"""GET /v1/models, GET /v1/models/{model}, GET /health."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from chatapi.api.auth import key_allows, model_not_allowed, request_key

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """The models the caller may use: a key limited to some models sees only those."""
    registry, key = request.app.state.chatapi.registry, request_key(request)
    return {"object": "list", "data": [m for m in registry.list_models()
                                       if key_allows(key, m["id"], registry)]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> dict:
    registry = request.app.state.chatapi.registry
    if not key_allows(request_key(request), model, registry):
        raise model_not_allowed(model)  # as for a model that does not exist
    return registry.get_model(model)


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    engine = request.app.state.chatapi.engine
    if not engine.alive:
        return JSONResponse({"status": "error", "engine": "dead"}, status_code=503)
    return JSONResponse({"status": "ok", "running": len(engine.scheduler.running),
                         "waiting": engine.scheduler.num_waiting})
