"""Who is calling: static `--api-key` keys, admin keys, and keys from the store.

`AuthMiddleware` identifies the caller for every route but the open ones, and puts the key in
`scope["state"]`; `admit()` is called by the generation routes once the prompt is tokenized, to
refuse other models (404) and requests over the key's rate limits (429) before the engine.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.exc import SQLAlchemyError

from chatapi.api.errors import APIError
from chatapi.api.middleware import ASGIApp, Message, Receive, Scope, Send, is_open_path, send_error
from chatapi.models.registry import ModelRegistry
from chatapi.store import ApiKey, Store, Verdict

log = logging.getLogger("chatapi.auth")
ADMIN_KEY_ID = "admin"
_KEYS_RECHECK_S = 1.0  # while no key exists, look again at most this often


def is_admin_path(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/") or path == "/v1/usage"


def invalid_api_key() -> APIError:
    # One answer for missing, wrong, revoked, expired and malformed keys: it tells nothing.
    return APIError(401, "Incorrect API key provided. Provide a valid API key in an "
                         "Authorization header using Bearer auth (Authorization: Bearer KEY).",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class Caller:
    key_id: str | None  # the ledger's key column: a store key's prefix, "admin", or None
    admin: bool = False
    key: ApiKey | None = None  # store keys only: their models and limits


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _matches(token: str, keys: list[bytes]) -> bool:
    found = False
    for key in keys:  # compare with every key, so timing says nothing
        found |= hmac.compare_digest(token.encode(), key)
    return found


class AuthMiddleware:
    """Keys are required when `--api-key` or `--require-key` is given, or once the store holds
    any key; `/admin/*` and `/v1/usage` always need an admin key."""

    def __init__(self, app: ASGIApp, *, store: Store, api_keys: Iterable[str] = (),
                 admin_keys: Iterable[str] = (), require_key: bool = False) -> None:
        self.app = app
        self.store = store
        self.static_keys = [k.encode() for k in api_keys if k]
        self.admin_keys = [k.encode() for k in admin_keys if k]
        self.require_key = require_key or bool(self.static_keys)
        self._keys_exist = False
        self._keys_checked = -math.inf

    async def keys_required(self) -> bool:
        if self.require_key or self._keys_exist:
            return True
        if time.monotonic() - self._keys_checked > _KEYS_RECHECK_S:
            self._keys_exist = await self.store.keys.any()  # keys are never deleted
            self._keys_checked = time.monotonic()
        return self._keys_exist

    async def identify(self, token: str | None, *, stored: bool = True) -> Caller | None:
        """The caller a bearer token stands for; stored keys are looked up if `stored`."""
        if not token:
            return None
        if _matches(token, self.admin_keys):
            return Caller(ADMIN_KEY_ID, admin=True)
        if _matches(token, self.static_keys):
            return Caller(None)
        if not stored:
            return None
        key = await self.store.keys.find(token)
        if key is None or key.status() != "active":
            return None
        return Caller(key.prefix, key=key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open_path(scope["path"]):
            return await self.app(scope, receive, send)
        try:
            required = is_admin_path(scope["path"]) or await self.keys_required()
            # An open server has no stored keys to find: no lookup for "sk-anything".
            caller = await self.identify(_bearer(scope), stored=required)
        except (SQLAlchemyError, OSError):
            log.exception("key lookup failed")
            return await send_error(send, APIError(
                503, "The server cannot check API keys right now. Retry shortly.",
                type="server_error", code="store_unavailable", headers={"Retry-After": "5"}))
        if caller is None and required:
            return await send_error(send, invalid_api_key())
        if is_admin_path(scope["path"]) and caller is not None and not caller.admin:
            return await send_error(send, APIError(
                403, "This route needs an admin key.", type="invalid_request_error",
                code="insufficient_permissions"))
        state = scope.setdefault("state", {})
        state["key_id"] = caller.key_id if caller else None
        state["api_key"] = caller.key if caller else None

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start" and state.get("ratelimit_headers"):
                message["headers"] = list(message.get("headers", [])) + [
                    (k.encode(), v.encode()) for k, v in state["ratelimit_headers"].items()]
            await send(message)

        try:
            await self.app(scope, receive, send_with_limits)
        finally:
            if state.get("api_key") is not None and state.get("request_id"):
                try:
                    await self.store.limiter.release(state["request_id"])
                except Exception:  # the response is out; a failed correction only costs budget
                    log.exception("rate limit correction failed")


# --- admission: called by the generation routes ----------------------------------------------


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{text}s" if minutes else f"{text}s"


def ratelimit_headers(verdict: Verdict) -> dict[str, str]:
    headers = {}
    for kind, budget in (("requests", verdict.requests), ("tokens", verdict.tokens)):
        if budget is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(budget.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(budget.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = _duration(budget.reset_s)
    return headers


def rate_limit_error(key: ApiKey, verdict: Verdict) -> APIError:
    headers = ratelimit_headers(verdict)
    kind = verdict.exceeded or "requests"
    budget = verdict.requests if kind == "requests" else verdict.tokens
    limit = budget.limit if budget else 0
    unit = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    headers["Retry-After"] = str(max(1, math.ceil(verdict.retry_after_s)))
    headers["retry-after-ms"] = str(max(1, math.ceil(verdict.retry_after_s * 1000)))
    message = (f"Rate limit reached for key {key.prefix} on {unit}: Limit {limit}. "
               f"Please try again in {_duration(verdict.retry_after_s)}.")
    return APIError(429, message, type=kind, code="rate_limit_exceeded", headers=headers)


def model_not_allowed(model: str) -> APIError:
    shown = model if len(model) <= 200 else model[:200] + "…"
    return APIError(404, f"The model `{shown}` does not exist or you do not have access to it.",
                    param="model", code="model_not_found")


def key_allows(key: ApiKey | None, model: str, registry: ModelRegistry) -> bool:
    """Whether a key may use `model`: keys without a model list may use every model; a list
    names models by the id served or by an alias (the id lets every alias through)."""
    if key is None or key.models is None:
        return True
    return model in key.models or (model in registry and registry.resolve(model) in key.models)


def request_key(request: Request) -> ApiKey | None:
    """The store key the request was authenticated with (None: no key, or a configured one)."""
    return request.scope.get("state", {}).get("api_key")


async def admit(request: Request, model: str, tokens: int) -> None:
    """Let the request's key use `model` for up to `tokens` (prompt + max completion), or raise
    404 `model_not_found` / 429 `rate_limit_exceeded`. Requests without a store key pass."""
    state = request.scope.get("state", {})
    key = request_key(request)
    if key is None:
        return
    if not key_allows(key, model, request.app.state.chatapi.registry):
        raise model_not_allowed(model)
    if not key.limited:
        return
    store: Store = request.app.state.store
    verdict = await store.limiter.acquire(key, tokens, state["request_id"])
    if not verdict.admitted:
        raise rate_limit_error(key, verdict)
    state["ratelimit_headers"] = ratelimit_headers(verdict)
