"""The usage ledger: records queue without I/O, are written in batches, and all reach the
database by close(); summaries add them up."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from chatapi.api.usage import UsageRecord
from chatapi.store import Store
from chatapi.store.ledger import UsageLedger, summarize
from chatapi.store.schema import usage_ledger
from chatapi.store.times import utcnow

pytestmark = pytest.mark.anyio


def record(i: int, **fields: object) -> UsageRecord:
    values: dict = {"request_id": f"req_{i:06d}", "endpoint": "chat.completions",
                    "model": "gpt-4", "key_id": "sk-AAAAAAAA", "prompt_tokens": 10 + i,
                    "completion_tokens": i % 7, "cached_tokens": i % 3, "finish_reason": "stop",
                    "latency_s": 0.5, "ttft_s": 0.1}
    return UsageRecord(**{**values, **fields})


async def rows(store: Store) -> list:
    async with store.engine.connect() as conn:
        return list(await conn.execute(select(usage_ledger).order_by(usage_ledger.c.id)))


async def test_every_record_is_written_once_with_its_fields(store: Store) -> None:
    records = [record(i) for i in range(300)]
    records[5].finish_reason, records[6].finish_reason = "aborted", "error"
    records[7].ttft_s = None
    started = time.perf_counter()
    for r in records:
        store.record_usage(r)
    assert time.perf_counter() - started < 0.5  # queuing only: no database round trip
    await store.ledger.drain()
    written = await rows(store)
    assert [r.request_id for r in written] == [r.request_id for r in records]
    assert written[5].finish_reason == "aborted" and written[6].finish_reason == "error"
    assert written[7].ttft_s is None and written[8].ttft_s == pytest.approx(0.1)
    first = written[0]
    assert (first.key_id, first.model, first.endpoint, first.prompt_tokens,
            first.completion_tokens, first.cached_tokens, first.latency_s) == (
        "sk-AAAAAAAA", "gpt-4", "chat.completions", 10, 0, 0, 0.5)
    assert abs(first.created_at - utcnow()) < timedelta(minutes=1)


async def test_close_writes_what_is_still_queued(database_url: str) -> None:
    opened = await Store(database_url).open()
    for i in range(1000):
        opened.record_usage(record(i))
    assert opened.ledger.pending > 0
    await opened.close()
    reopened = await Store(database_url).open()
    try:
        assert len(await rows(reopened)) == 1000
    finally:
        await reopened.close()


async def test_records_are_batched(store: Store) -> None:
    writes: list[int] = []
    original = store.ledger.write

    async def counting_write(batch: list[UsageRecord]) -> None:
        writes.append(len(batch))
        await original(batch)

    store.ledger.write = counting_write  # type: ignore[method-assign]
    for i in range(400):
        store.record_usage(record(i))
    await store.ledger.drain()
    assert sum(writes) == 400 and len(writes) < 10


async def test_a_failed_write_is_retried_and_a_repeat_is_not_a_duplicate(store: Store) -> None:
    ledger = UsageLedger(store.engine, retry_s=(0.01, 0.01))
    failures = [RuntimeError("database went away")]
    original = ledger.write

    async def flaky_write(batch: list[UsageRecord]) -> None:
        await original(batch)  # written, but the caller hears of a failure: it will retry
        if failures:
            raise failures.pop()

    ledger.write = flaky_write  # type: ignore[method-assign]
    ledger.start()
    for i in range(10):
        ledger.record(record(i))
    await ledger.close()
    assert len(await rows(store)) == 10


async def test_a_record_after_close_is_logged_not_lost_silently(
        store: Store, caplog: pytest.LogCaptureFixture) -> None:
    await store.ledger.close()
    with caplog.at_level(logging.ERROR, logger="chatapi.store"):
        store.record_usage(record(1))
    assert "req_000001" in caplog.text


async def test_summaries_add_up(store: Store) -> None:
    records = [record(i, key_id=("sk-AAAAAAAA" if i % 2 else None),
                      model=("gpt-4" if i % 3 else "gpt-3.5-turbo"),
                      finish_reason=("aborted" if i % 5 == 0 else "stop")) for i in range(30)]
    old = record(99, created=time.time() - 3 * 86400)
    for r in [*records, old]:
        store.record_usage(r)
    await store.ledger.drain()
    everything = records + [old]

    [total] = await summarize(store.engine)
    assert total["requests"] == 31
    assert total["prompt_tokens"] == sum(r.prompt_tokens for r in everything)
    assert total["completion_tokens"] == sum(r.completion_tokens for r in everything)
    assert total["cached_tokens"] == sum(r.cached_tokens for r in everything)
    assert total["total_tokens"] == total["prompt_tokens"] + total["completion_tokens"]
    assert total["aborted"] == sum(r.finish_reason == "aborted" for r in everything)

    by_key = {row["key"]: row for row in await summarize(store.engine, by="key")}
    assert by_key["sk-AAAAAAAA"]["requests"] == 16 and by_key[None]["requests"] == 15
    by_model = await summarize(store.engine, by="model")
    assert sum(row["requests"] for row in by_model) == 31
    by_day = await summarize(store.engine, by="day")
    assert [row["requests"] for row in by_day] == [1, 30]
    assert by_day[1]["day"] == utcnow().date().isoformat()

    recent = await summarize(store.engine, since=utcnow() - timedelta(days=1))
    assert recent[0]["requests"] == 30
    one_key = await summarize(store.engine, key="sk-AAAAAAAA")
    assert one_key[0]["requests"] == 16


async def test_concurrent_sinks_from_many_tasks(store: Store) -> None:
    async def request(i: int) -> None:
        await asyncio.sleep(0.001 * (i % 5))
        store.record_usage(record(i))

    await asyncio.gather(*(request(i) for i in range(200)))
    await store.ledger.drain()
    async with store.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(usage_ledger)) == 200
