"""Rate limits: token buckets per key in the database, shared by every process using it."""

from __future__ import annotations

import asyncio

import pytest

from chatapi.api.usage import UsageRecord
from chatapi.store import Store
from chatapi.store.keys import ApiKey

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(store: Store) -> Clock:
    clock = Clock()
    store.limiter.clock = clock
    return clock


async def test_rpm_5_refuses_the_sixth_and_refills_continuously(store: Store, clock: Clock
                                                                ) -> None:
    key, _ = await store.keys.create("k", rpm=5)
    remaining = []
    for i in range(5):
        verdict = await store.limiter.acquire(key, 100, f"r{i}")
        assert verdict.admitted and verdict.tokens is None
        remaining.append(verdict.requests.remaining)
        clock.now += 0.1
    assert remaining == [4, 3, 2, 1, 0]

    refused = await store.limiter.acquire(key, 100, "r5")
    assert not refused.admitted and refused.exceeded == "requests"
    assert refused.requests.limit == 5 and refused.requests.remaining == 0
    # One request comes back every 12 s, counted from the first at t=0; now t=0.5.
    assert refused.retry_after_s == pytest.approx(11.5)
    assert refused.requests.reset_s == pytest.approx(59.5)

    clock.now += 11.4
    assert not (await store.limiter.acquire(key, 100, "r6")).admitted
    clock.now += 0.2
    assert (await store.limiter.acquire(key, 100, "r7")).admitted
    clock.now += 61
    assert (await store.limiter.acquire(key, 100, "r8")).requests.remaining == 4


async def test_tokens_are_reserved_then_corrected_to_what_was_used(store: Store, clock: Clock
                                                                   ) -> None:
    key, _ = await store.keys.create("k", tpm=1000)
    first = await store.limiter.acquire(key, 600, "a")  # prompt + max_tokens
    assert first.admitted and first.requests is None
    assert first.tokens.remaining == 400 and first.tokens.reset_s == pytest.approx(36)

    refused = await store.limiter.acquire(key, 600, "b")
    assert not refused.admitted and refused.exceeded == "tokens"
    assert refused.retry_after_s == pytest.approx(200 * 60 / 1000)
    await store.limiter.release("b")  # never admitted: nothing to give back

    store.record_usage(UsageRecord(request_id="a", endpoint="chat.completions", model="m",
                                   key_id=key.prefix, prompt_tokens=50, completion_tokens=50,
                                   finish_reason="stop"))
    await store.limiter.release("a")  # 600 reserved, 100 used
    second = await store.limiter.acquire(key, 600, "c")
    assert second.admitted and second.tokens.remaining == 300


async def test_a_request_that_was_never_accepted_gives_everything_back(store: Store, clock: Clock
                                                                       ) -> None:
    key, _ = await store.keys.create("k", rpm=2, tpm=1000)
    await store.limiter.acquire(key, 500, "a")
    await store.limiter.release("a")  # e.g. the engine queue was full: no usage record
    verdict = await store.limiter.acquire(key, 500, "b")
    assert verdict.requests.remaining == 1 and verdict.tokens.remaining == 500


async def test_a_request_larger_than_a_minute_of_tokens_waits_for_a_full_bucket(
        store: Store, clock: Clock) -> None:
    key, _ = await store.keys.create("k", tpm=100)
    big = await store.limiter.acquire(key, 5000, "big")
    assert big.admitted and big.tokens.remaining == 0
    store.record_usage(UsageRecord(request_id="big", endpoint="completions", model="m",
                                   key_id=key.prefix, prompt_tokens=150, completion_tokens=50,
                                   finish_reason="stop"))
    await store.limiter.release("big")  # used 200: charged in full
    clock.now += 60
    assert not (await store.limiter.acquire(key, 10, "next")).admitted  # still 100 in use
    clock.now += 60
    assert (await store.limiter.acquire(key, 10, "later")).admitted


async def test_keys_have_separate_buckets(store: Store, clock: Clock) -> None:
    a, _ = await store.keys.create("a", rpm=1)
    b, _ = await store.keys.create("b", rpm=1)
    assert (await store.limiter.acquire(a, 1, "a1")).admitted
    assert not (await store.limiter.acquire(a, 1, "a2")).admitted
    assert (await store.limiter.acquire(b, 1, "b1")).admitted


async def test_concurrent_admissions_never_exceed_the_limit(store: Store) -> None:
    key, _ = await store.keys.create("k", rpm=5, tpm=10_000)
    verdicts = await asyncio.gather(*(store.limiter.acquire(key, 10, f"r{i}")
                                      for i in range(20)))
    assert sum(v.admitted for v in verdicts) == 5


async def test_two_stores_on_one_database_share_the_limit(database_url: str) -> None:
    first, second = await Store(database_url).open(), await Store(database_url).open()
    try:
        key, _ = await first.keys.create("shared", rpm=5)
        results = await asyncio.gather(*(
            (first if i % 2 else second).limiter.acquire(key, 1, f"r{i}") for i in range(12)))
        assert sum(v.admitted for v in results) == 5
    finally:
        await first.close()
        await second.close()


def test_unlimited_keys_are_not_limited() -> None:
    key = ApiKey(1, "sk-x", "x", None, None, None, None, None, None)  # type: ignore[arg-type]
    assert not key.limited
