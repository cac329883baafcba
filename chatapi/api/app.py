"""create_app(settings) -> FastAPI. The lifespan loads the model and starts/stops the engine."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from chatapi import __version__
from chatapi.api.auth import AuthMiddleware
from chatapi.api.disconnect import CLIENT_CLOSED
from chatapi.api.errors import HANDLED_ERRORS, APIError, error_body, error_response
from chatapi.api.metrics import Metrics, MetricsMiddleware, metrics_endpoint, step_timer
from chatapi.api.middleware import (
    AccessLog,
    BodyLimitMiddleware,
    Lifecycle,
    LifecycleMiddleware,
    RequestIdMiddleware,
)
from chatapi.api.routes import admin, chat, completions, models, moderations, usage
from chatapi.api.state import ServerState
from chatapi.chat.template import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from chatapi.config import Settings
from chatapi.engine.engine import AsyncEngine
from chatapi.engine.runner import Runner, RunnerConfig
from chatapi.models.default import DEFAULT_MODEL_ID, ensure_default_model
from chatapi.models.registry import ModelRegistry
from chatapi.moderation import Policy
from chatapi.store import Store, resolve_url

log = logging.getLogger("chatapi")
PLAYGROUND_DIR = Path(__file__).resolve().parent.parent / "playground"


def resolve_model_path(settings: Settings, progress: bool = True) -> tuple[str, str]:
    """(path of the GGUF to serve, its served id)."""
    if settings.model:
        path = Path(settings.model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        return str(path), settings.served_model_name or path.stem
    path = ensure_default_model(settings.home, progress=progress)
    return str(path), settings.served_model_name or DEFAULT_MODEL_ID


def build_state(settings: Settings) -> ServerState:
    policy = Policy.load(settings.moderation_policy) if settings.moderation_policy else None
    model_path, model_id = resolve_model_path(settings)
    started = time.monotonic()
    spec_draft = settings.spec_draft if settings.speculative == "ngram" else 0
    runner = Runner(RunnerConfig(
        model_path=model_path, ctx_size=settings.ctx_size, num_slots=settings.parallel,
        batch_size=settings.batch_size, threads=settings.threads, repack=settings.repack,
        tiled_matmul=settings.tiled_matmul, max_draft=spec_draft))
    log.info("loaded %s in %.1f s", model_path, time.monotonic() - started)
    template = ChatTemplate(runner.chat_template or DEFAULT_CHAT_TEMPLATE,
                            bos_token=runner.bos_text, eos_token=runner.eos_text)
    engine = AsyncEngine(runner, num_slots=settings.parallel, max_queue=settings.max_queue,
                         prefix_cache=settings.prefix_cache, prefix_align=settings.prefix_align,
                         step_tokens=settings.step_tokens, spec_draft=spec_draft)
    registry = ModelRegistry(model_id, [a for a in settings.aliases if a != model_id])
    return ServerState(settings, engine, registry, template, model_path, moderation=policy)


def create_app(settings: Settings, state: ServerState | None = None) -> FastAPI:
    store = Store(resolve_url(settings.database_url, settings.home))
    metrics = Metrics()
    access = AccessLog()
    lifecycle = Lifecycle(settings.request_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.open()  # applies migrations: a bad database fails before the model loads
        app.state.store = store
        try:
            server = state or build_state(settings)
            server.usage_sink = access.usage_sink(
                metrics.usage_sink(store.sink(forward=server.usage_sink)))
            metrics.watch_engine(server.engine)
            server.engine.on_step = step_timer(metrics)
            server.engine.start()
            app.state.chatapi = server
            try:
                yield
            finally:
                server.engine.stop()
        finally:
            await store.close()  # writes every queued usage row

    app = FastAPI(title="chatapi", version=__version__, lifespan=lifespan,
                  docs_url="/docs", redoc_url=None)
    for router in (chat.router, completions.router, models.router, admin.router, usage.router,
                   moderations.router):
        app.include_router(router)
    _install_error_handlers(app)
    app.state.metrics = metrics
    app.state.lifecycle = lifecycle  # the server drains it on SIGTERM (chatapi.api.server)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)

    if PLAYGROUND_DIR.is_dir():
        app.mount("/playground", StaticFiles(directory=PLAYGROUND_DIR, html=True),
                  name="playground")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/playground/")

    # Each add wraps the previous: size limits innermost, then auth, deadlines and draining,
    # ids and the access log, metrics outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       max_header_bytes=settings.max_header_bytes,
                       max_headers=settings.max_headers)
    app.add_middleware(AuthMiddleware, store=store, api_keys=settings.api_keys,
                       admin_keys=settings.admin_keys, require_key=settings.require_key)
    app.add_middleware(LifecycleMiddleware, lifecycle=lifecycle)
    app.add_middleware(RequestIdMiddleware, access=access)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = (f"Unknown request URL: {request.method} {request.url.path}."
                   if exc.status_code in (404, 405) else str(exc.detail))
        err = APIError(exc.status_code, message, code=code)
        return JSONResponse(error_body(err), status_code=exc.status_code)

    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        err = APIError(400, f"Invalid request: {first.get('msg', 'invalid value')}.",
                       param=param)
        return JSONResponse(error_body(err), status_code=400)

    async def on_client_gone(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=CLIENT_CLOSED)  # gone before its body arrived: nobody reads

    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(RequestValidationError, on_validation)
    # Known errors are handled in the router; a bare Exception handler would also be logged
    # as a crash by Starlette's outermost middleware.
    for cls in (APIError, *HANDLED_ERRORS):
        app.add_exception_handler(cls, on_error)
    app.add_exception_handler(Exception, on_error)
