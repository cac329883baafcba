"""Prometheus metrics at GET /metrics: requests, sequences, slots, tokens, latencies."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response

from chatapi.api.usage import UsageRecord, UsageSink

if TYPE_CHECKING:
    from chatapi.engine.engine import AsyncEngine

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
_TOKEN_GAP_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2, 5)


class _EngineCollector:
    """Reads the engine's state at scrape time (no per-step cost)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        sched = self.engine.scheduler
        yield GaugeMetricFamily("chatapi_sequences_running", "Sequences generating now",
                                value=len(sched.running))
        yield GaugeMetricFamily("chatapi_requests_waiting", "Requests waiting for a slot",
                                value=sched.num_waiting)
        yield GaugeMetricFamily("chatapi_slots_busy", "Slots held by running sequences",
                                value=sched.num_slots - len(sched.free_slots))
        yield GaugeMetricFamily("chatapi_slots_total", "Slots (parallel sequences)",
                                value=sched.num_slots)
        yield GaugeMetricFamily("chatapi_prefix_cache_tokens",
                                "Tokens kept in free slots for prefix reuse",
                                value=sched.num_cached_tokens)
        yield GaugeMetricFamily("chatapi_engine_alive", "1 while the engine thread runs",
                                value=1 if self.engine.alive else 0)
        yield CounterMetricFamily("chatapi_spec_draft_tokens",
                                  "Prompt-lookup draft tokens verified",
                                  value=self.engine.spec_proposed)
        yield CounterMetricFamily("chatapi_spec_accepted_tokens",
                                  "Draft tokens the sampler agreed with (kept)",
                                  value=self.engine.spec_accepted)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter("chatapi_http_requests", "HTTP requests by route and status",
                                ["path", "method", "status"], registry=reg)
        self.prompt_tokens = Counter("chatapi_prompt_tokens", "Prompt tokens of requests",
                                     registry=reg)
        self.generation_tokens = Counter("chatapi_generation_tokens", "Generated tokens",
                                         registry=reg)
        self.cached_tokens = Counter("chatapi_prefix_cache_hit_tokens",
                                     "Prompt tokens reused from the prefix cache", registry=reg)
        self.finished = Counter("chatapi_requests_finished", "Accepted requests by how they ended",
                                ["endpoint", "finish_reason"], registry=reg)
        self.ttft = Histogram("chatapi_time_to_first_token_seconds", "Time to first token",
                              buckets=_LATENCY_BUCKETS, registry=reg)
        self.latency = Histogram("chatapi_request_latency_seconds", "End-to-end latency",
                                 buckets=_LATENCY_BUCKETS, registry=reg)
        self.token_gap = Histogram("chatapi_inter_token_latency_seconds",
                                   "Time between decode steps of running sequences",
                                   buckets=_TOKEN_GAP_BUCKETS, registry=reg)

    def watch_engine(self, engine: AsyncEngine) -> None:
        self.registry.register(_EngineCollector(engine))

    def usage_sink(self, downstream: UsageSink) -> UsageSink:
        """A sink that records a request's figures, then hands the record on."""
        def sink(record: UsageRecord) -> None:
            self.prompt_tokens.inc(record.prompt_tokens)
            self.generation_tokens.inc(record.completion_tokens)
            self.cached_tokens.inc(record.cached_tokens)
            self.finished.labels(record.endpoint, record.finish_reason).inc()
            self.latency.observe(record.latency_s)
            if record.ttft_s is not None:
                self.ttft.observe(record.ttft_s)
            downstream(record)
        return sink

    def response(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Counts every HTTP response by route template (not raw path: bounded label values)."""

    def __init__(self, app, metrics: Metrics) -> None:  # noqa: ANN001 - any ASGI app
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def send_status(message) -> None:  # noqa: ANN001
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(path, scope.get("method", ""), str(status)).inc()


def metrics_endpoint(request: Request) -> Response:
    return request.app.state.metrics.response()


def step_timer(metrics: Metrics) -> Callable[[int, int], None]:
    """Engine hook called after each step with (rows decoded, sequences running): the wall
    time between consecutive decode steps is each running sequence's inter-token gap,
    prefill steps in between included."""
    last = 0.0

    def on_step(decoded: int, running: int) -> None:
        nonlocal last
        now = time.monotonic()
        if decoded:
            if last:
                gap = now - last
                for _ in range(decoded):
                    metrics.token_gap.observe(gap)
            last = now
        if not running:
            last = 0.0
    return on_step
