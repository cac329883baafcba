"""One usage record per accepted request: completed, length-stopped, aborted or errored."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("chatapi.usage")


@dataclass
class UsageRecord:
    request_id: str
    endpoint: str
    model: str
    key_id: str | None = None  # which API key made the request, when keys are on
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reason: str = "error"  # stop | length | tool_calls | ... | aborted | error
    latency_s: float = 0.0
    ttft_s: float | None = None
    created: float = field(default_factory=time.time)


UsageSink = Callable[[UsageRecord], None]


def log_sink(record: UsageRecord) -> None:
    log.debug("usage %s", record)


class UsageTracker:
    """Collects one request's figures and hands exactly one record to the sink."""

    def __init__(self, sink: UsageSink, record: UsageRecord, started: float | None = None
                 ) -> None:
        self._sink = sink
        self.record = record
        self._started = started if started is not None else time.monotonic()
        self.done = False

    def first_token(self) -> None:
        if self.record.ttft_s is None:
            self.record.ttft_s = time.monotonic() - self._started

    def count(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> None:
        self.record.prompt_tokens = prompt_tokens
        self.record.completion_tokens = completion_tokens
        self.record.cached_tokens = cached_tokens

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.record.finish_reason = reason
        self.record.latency_s = time.monotonic() - self._started
        try:
            self._sink(self.record)
        except Exception:  # a broken ledger must not break the response
            log.exception("usage sink failed")
