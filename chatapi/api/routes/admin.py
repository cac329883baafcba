"""Key management over HTTP, for admin keys only: /admin/keys."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from chatapi.api.errors import APIError
from chatapi.api.protocol import parse_request
from chatapi.store import Store
from chatapi.store.times import as_utc, utcnow

router = APIRouter(prefix="/admin", tags=["admin"])


class CreateKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, description="who or what uses the key")
    rpm: int | None = Field(default=None, ge=1, le=10**9, description="requests per minute")
    tpm: int | None = Field(default=None, ge=1, le=10**12, description="tokens per minute")
    models: list[str] | None = Field(default=None, min_length=1, max_length=100,
                                     description="model names the key may use; all if absent")
    expires_at: datetime | int | None = Field(
        default=None, description="when the key stops working: unix seconds or ISO 8601 (UTC "
                                  "unless an offset is given)")


def _store(request: Request) -> Store:
    return request.app.state.store


def _key_not_found(key_id: str) -> APIError:
    return APIError(404, f"No API key with id `{key_id[:40]}`.", param="id", code="not_found")


@router.post("/keys", status_code=201, summary="Create a key; its secret is returned once")
async def create_key(request: Request) -> JSONResponse:
    req = parse_request(CreateKeyRequest, await request.body())
    expires = req.expires_at
    if isinstance(expires, int):
        expires = datetime.fromtimestamp(expires, UTC)
    if expires is not None:
        expires = as_utc(expires)
    if expires is not None and expires <= utcnow():
        raise APIError(400, "Invalid value for 'expires_at': it is in the past.",
                       param="expires_at")
    if req.models is not None and not all(0 < len(m) <= 256 for m in req.models):
        raise APIError(400, "Invalid value for 'models': names have 1 to 256 characters.",
                       param="models")
    key, secret = await _store(request).keys.create(req.name, rpm=req.rpm, tpm=req.tpm,
                                                     models=req.models, expires_at=expires)
    return JSONResponse({**key.to_json(), "key": secret}, status_code=201)


@router.get("/keys", summary="List keys (never their secrets)")
async def list_keys(request: Request) -> dict:
    return {"object": "list", "data": [k.to_json() for k in await _store(request).keys.list()]}


@router.get("/keys/{key_id}", summary="One key")
async def get_key(key_id: str, request: Request) -> dict:
    key = await _store(request).keys.get(key_id)
    if key is None:
        raise _key_not_found(key_id)
    return key.to_json()


@router.delete("/keys/{key_id}", summary="Revoke a key: it is refused from now on")
async def revoke_key(key_id: str, request: Request) -> dict:
    key = await _store(request).keys.revoke(key_id)
    if key is None:
        raise _key_not_found(key_id)
    return key.to_json()
