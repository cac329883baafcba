"""The usage ledger: one row per accepted request, written in batches off the hot path."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from datetime import UTC, date, datetime
from typing import Any, Literal

from sqlalchemy import Date, case, cast, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from chatapi.api.usage import UsageRecord
from chatapi.store.schema import usage_ledger

log = logging.getLogger("chatapi.store")
GroupBy = Literal["day", "key", "model"]


def _row(record: UsageRecord) -> dict[str, Any]:
    return {"request_id": record.request_id,
            "created_at": datetime.fromtimestamp(record.created, UTC).replace(tzinfo=None),
            "key_id": record.key_id, "endpoint": record.endpoint, "model": record.model,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "cached_tokens": record.cached_tokens, "finish_reason": record.finish_reason,
            "latency_s": record.latency_s, "ttft_s": record.ttft_s}


class UsageLedger:
    """`record()` only enqueues (it runs on the event loop for every request); a background task
    writes whatever has queued up in one transaction. `close()` writes everything left."""

    def __init__(self, engine: AsyncEngine, *, batch_size: int = 500,
                 retry_s: tuple[float, ...] = (0.5, 1, 2, 5, 10)) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.retry_s = retry_s
        self._queue: asyncio.Queue[UsageRecord] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="chatapi-usage-ledger")

    def record(self, record: UsageRecord) -> None:
        if self._closed:
            log.error("usage record after the ledger closed, not stored: %s",
                      json.dumps(dataclasses.asdict(record)))
            return
        self._queue.put_nowait(record)

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write_retrying(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write_retrying(self, batch: list[UsageRecord]) -> None:
        for attempt, pause in enumerate((*self.retry_s, None)):
            try:
                await self.write(batch)
                return
            except Exception:
                if pause is None or self._closed:
                    break
                log.warning("usage ledger write failed (attempt %d); retrying in %.1f s",
                            attempt + 1, pause, exc_info=True)
                await asyncio.sleep(pause)
        log.error("usage ledger: %d rows could not be written: %s", len(batch),
                  json.dumps([dataclasses.asdict(r) for r in batch]), exc_info=True)

    async def write(self, records: list[UsageRecord]) -> None:
        """Insert rows at once; a request id already stored is skipped, so retries are safe."""
        dialect = {"sqlite": sqlite, "postgresql": postgresql}[self.engine.dialect.name]
        stmt = dialect.insert(usage_ledger).on_conflict_do_nothing(index_elements=["request_id"])
        async with self.engine.begin() as conn:
            await conn.execute(stmt, [_row(r) for r in records])
        self.written += len(records)

    async def drain(self) -> None:
        """Wait until every record queued so far is written (or given up on)."""
        await self._queue.join()

    async def close(self, timeout: float = 60.0) -> None:
        """Write what is queued, then stop; records that come later are logged, not stored."""
        try:
            # Requests cancelled by the server's shutdown finish a moment later: let them queue.
            await asyncio.sleep(0)
            await asyncio.wait_for(self.drain(), timeout)
        except TimeoutError:
            log.error("usage ledger: %d rows still queued at exit", self.pending)
        finally:
            self._closed = True
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task


def _day(engine: AsyncEngine) -> Any:
    created = usage_ledger.c.created_at
    if engine.dialect.name == "sqlite":
        return func.date(created)
    return cast(created, Date)


async def summarize(engine: AsyncEngine, *, by: GroupBy | None = None, key: str | None = None,
                    since: datetime | None = None, until: datetime | None = None
                    ) -> list[dict[str, Any]]:
    """Totals of the ledger, one dict per group (or one in all), oldest day / name first."""
    t = usage_ledger.c
    group = {"day": _day(engine), "key": t.key_id, "model": t.model, None: None}[by]
    columns = [
        func.count().label("requests"),
        func.coalesce(func.sum(t.prompt_tokens), 0).label("prompt_tokens"),
        func.coalesce(func.sum(t.completion_tokens), 0).label("completion_tokens"),
        func.coalesce(func.sum(t.cached_tokens), 0).label("cached_tokens"),
        func.coalesce(func.sum(case((t.finish_reason == "aborted", 1), else_=0)), 0)
        .label("aborted"),
        func.coalesce(func.sum(case((t.finish_reason == "error", 1), else_=0)), 0)
        .label("errors"),
    ]
    query = select(*([group.label("group")] if by else []), *columns)
    if key is not None:
        query = query.where(t.key_id == key)
    if since is not None:
        query = query.where(t.created_at >= since)
    if until is not None:
        query = query.where(t.created_at < until)
    if by:
        query = query.group_by(group).order_by(group.asc().nulls_last())
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).mappings().all()
    out = []
    for row in rows:
        item = {name: int(row[name]) for name in
                ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "aborted",
                 "errors")}
        item["total_tokens"] = item["prompt_tokens"] + item["completion_tokens"]
        if by:
            value = row["group"]
            item = {by: value.isoformat() if isinstance(value, date) else value, **item}
        out.append(item)
    return out
