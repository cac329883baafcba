"""GET /v1/usage (admin keys only): totals from the usage ledger."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request

from chatapi.api.errors import APIError
from chatapi.store.ledger import summarize
from chatapi.store.times import parse_when

router = APIRouter(tags=["admin"])


def _when(value: str | None, param: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_when(value, future=False)
    except ValueError as exc:
        raise APIError(400, f"Invalid value for '{param}': {exc}", param=param) from None


@router.get("/v1/usage", summary="Usage totals, optionally grouped by day, key or model")
async def usage(request: Request, by: Literal["day", "key", "model"] | None = None,
                key: str | None = None, since: str | None = None, until: str | None = None
                ) -> dict:
    """Totals of the ledger: `total` for everything selected, `data` one row per group.
    `since`/`until`: ISO date or time (UTC), unix seconds, or a span back from now (`7d`)."""
    engine = request.app.state.store.engine
    window = {"key": key, "since": _when(since, "since"), "until": _when(until, "until")}
    total = (await summarize(engine, **window))[0]
    data = await summarize(engine, by=by, **window) if by else []
    return {"object": "list", "by": by, "data": data, "total": total}
