"""AsyncEngine's request lifecycle over a fake runner (no model): the engine thread, hand-off,
finish reasons, n > 1 forks, aborts and slot release."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import pytest

from chatapi.engine.engine import AsyncEngine, EngineDeadError
from chatapi.engine.runner import Row, RunnerError
from chatapi.engine.sampling import SamplingParams
from chatapi.engine.scheduler import MIN_CHUNK, QueueFullError

EOS = 0
TEXT = "héllo wörld, 你好!"


@dataclass
class FakeConfig:
    ctx_size: int = 64
    batch_size: int = 8
    max_draft: int = 0


class FakeSampler:
    def __init__(self) -> None:
        self.freed = False

    def free(self) -> None:
        self.freed = True


class FakeRunner:
    """Emits the UTF-8 bytes of TEXT one byte per token (token = byte + 1), then EOS."""

    def __init__(self, fail_decode: bool = False, delay: float = 0.0) -> None:
        self.config = FakeConfig()
        self.fail_decode = fail_decode
        self.delay = delay
        self.kv: dict[int, int] = {}  # slot -> tokens in cache
        self.last_rows: list[Row] = []
        self.samplers: list[FakeSampler] = []
        self.decoded = threading.Event()

    def token_bytes(self, token: int) -> bytes:
        return bytes([token - 1])

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def decode(self, rows: list[Row]) -> None:
        if self.fail_decode:
            raise RunnerError("boom")
        if self.delay:
            threading.Event().wait(self.delay)
        self.last_rows = rows
        for row in rows:
            self.kv[row.slot] = max(self.kv.get(row.slot, 0), row.pos + 1)
        self.decoded.set()

    def sample(self, sampler: FakeSampler, index: int) -> int:
        row = self.last_rows[index]
        data = TEXT.encode()
        produced = row.pos + 1 - PROMPT_LEN
        return data[produced] + 1 if produced < len(data) else EOS

    def new_sampler(self, params: SamplingParams) -> FakeSampler:
        self.samplers.append(FakeSampler())
        return self.samplers[-1]

    def clear_slot(self, slot: int) -> None:
        self.kv.pop(slot, None)

    def trim_slot(self, slot: int, keep: int) -> None:
        if keep <= 0:
            self.kv.pop(slot, None)
        elif slot in self.kv:
            self.kv[slot] = min(self.kv[slot], keep)

    def copy_slot(self, src: int, dst: int) -> None:
        self.kv[dst] = self.kv[src]

    def close(self) -> None:
        pass


PROMPT_LEN = 20
PROMPT = [b + 1 for b in TEXT.encode()[:PROMPT_LEN]]  # the answer's start: lookup drafts it


async def collect(engine: AsyncEngine, params: list[SamplingParams],
                  prompt: list[int] = PROMPT) -> dict[int, tuple[str, str]]:
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    with engine.generate(prompt, params) as stream:
        async for outputs in stream:
            for out in outputs:
                texts.setdefault(out.index, []).append(out.text)
                if out.finish_reason:
                    finish[out.index] = out.finish_reason
    return {i: ("".join(t), finish.get(i)) for i, t in texts.items()}


@pytest.fixture
def engine():
    runners = []

    def make(**kwargs) -> AsyncEngine:
        runner = FakeRunner(**kwargs)
        eng = AsyncEngine(runner, num_slots=4, max_queue=2)
        eng.start()
        runners.append(eng)
        return eng

    yield make
    for eng in runners:
        eng.stop()


def run(coro):
    return asyncio.run(coro)


def test_generates_until_eos_with_intact_utf8(engine) -> None:
    eng = engine()
    result = run(collect(eng, [SamplingParams(max_tokens=100, temperature=0)]))
    assert result == {0: (TEXT, "stop")}
    assert not eng.scheduler.running
    assert all(s.freed for s in eng.runner.samplers)
    # the slot keeps its KV; only the prompt tokens are offered for reuse (decoded tokens'
    # KV comes from one-token ubatches, whose numbers differ from a prompt chunk's)
    (slot, cached), = eng.scheduler.cached.items()
    assert cached == PROMPT
    assert eng.runner.kv[slot] == PROMPT_LEN + len(TEXT.encode())


def test_max_tokens_gives_length(engine) -> None:
    result = run(collect(engine(), [SamplingParams(max_tokens=3, temperature=0)]))
    assert result == {0: ("hé", "length")}  # 3 bytes: 'h' + the two bytes of 'é'


def test_stop_string_is_not_shown(engine) -> None:
    result = run(collect(engine(), [SamplingParams(max_tokens=100, stop=("wö",))]))
    assert result == {0: ("héllo ", "stop")}


def test_n_choices_fork_from_one_prefill(engine) -> None:
    eng = engine()
    params = [SamplingParams(max_tokens=100, temperature=0)] * 3
    result = run(collect(eng, params))
    assert result == {i: (TEXT, "stop") for i in range(3)}


def test_abort_frees_the_slot_within_a_step(engine) -> None:
    eng = engine(delay=0.01)

    async def scenario() -> None:
        with eng.generate(PROMPT, [SamplingParams(max_tokens=1000)]) as stream:
            await stream.__anext__()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not eng.scheduler.running:
                break

    run(scenario())
    assert not eng.scheduler.running
    assert eng.scheduler.free_slots and len(eng.scheduler.free_slots) == 4
    assert eng.in_flight == 0


def test_second_request_reuses_the_cached_prompt(engine) -> None:
    eng = engine()
    run(collect(eng, [SamplingParams(max_tokens=100, temperature=0)]))

    async def cached_tokens() -> int:
        with eng.generate(PROMPT, [SamplingParams(max_tokens=2, temperature=0)]) as stream:
            async for outputs in stream:
                last = outputs[-1]
        return last.cached_tokens

    # all but the last chunk of the prompt come from the cache (it must be fed again for the
    # first logits, and no chunk is shorter than MIN_CHUNK)
    assert run(cached_tokens()) == PROMPT_LEN - MIN_CHUNK


def test_queue_full_is_refused_at_submit(engine) -> None:
    eng = engine(delay=0.05)

    async def scenario() -> None:
        streams = [eng.generate(PROMPT, [SamplingParams(max_tokens=50)]) for _ in range(6)]
        with pytest.raises(QueueFullError):
            eng.generate(PROMPT, [SamplingParams(max_tokens=50)])
        for stream in streams:
            stream.close()

    run(scenario())


def test_decode_failure_ends_the_request_with_an_error_and_engine_lives(engine) -> None:
    eng = engine(fail_decode=True)

    async def scenario() -> list:
        errors = []
        with eng.generate(PROMPT, [SamplingParams(max_tokens=5)]) as stream:
            async for outputs in stream:
                errors += [o.error for o in outputs if o.error]
        return errors

    assert run(scenario()) == ["boom"]
    assert eng.alive
    assert not eng.scheduler.running


def test_dead_engine_refuses_requests(engine) -> None:
    eng = engine()
    eng.stop()

    async def scenario() -> None:
        with pytest.raises(EngineDeadError):
            eng.generate(PROMPT, [SamplingParams(max_tokens=5)])

    run(scenario())


@pytest.mark.parametrize("choices", [1, 3])
def test_speculative_drafts_keep_the_text_and_drop_rejected_kv(choices: int) -> None:
    # The prompt holds the answer's first bytes, so prompt lookup drafts (mostly right) guesses;
    # the fake model's choice depends only on the position, as a real greedy one would.
    runner = FakeRunner()
    runner.config.max_draft = 4
    trims: list[tuple[int, int]] = []
    original_trim = runner.trim_slot

    def trim(slot: int, keep: int) -> None:
        trims.append((slot, keep))
        original_trim(slot, keep)

    runner.trim_slot = trim
    eng = AsyncEngine(runner, num_slots=4, max_queue=2, spec_draft=4)
    eng.start()
    try:
        params = [SamplingParams(max_tokens=100, temperature=0)] * choices
        result = run(collect(eng, params))
    finally:
        eng.stop()
    # several sequences verify their drafts in one batch, each in its own rows
    assert result == {i: (TEXT, "stop") for i in range(choices)}
    assert eng.spec_proposed > 0 and 0 < eng.spec_accepted <= eng.spec_proposed
    assert eng.steps < len(TEXT.encode())  # fewer steps than tokens: drafts were kept
    # every rejected draft's KV was cut back to the sequence's last accepted token
    # (the others are the admission's: each slot starts empty)
    assert all(keep > PROMPT_LEN for _, keep in trims if keep)


def test_a_sequence_ending_inside_its_draft_finishes_cleanly() -> None:
    # The prompt holds the answer's last bytes followed by more text, so the last step drafts
    # past the end: the model's end token rejects the draft and ends the sequence in mid-verify.
    # (Its lookup was freed on finishing while the step still counted its draft: engine error.)
    runner = FakeRunner()
    runner.config.max_draft = 4
    prompt = [b + 1 for b in TEXT.encode()[-4:]] + [ord("x") + 1] * (PROMPT_LEN - 4)
    eng = AsyncEngine(runner, num_slots=4, max_queue=2, spec_draft=4)
    eng.start()
    try:
        result = run(collect(eng, [SamplingParams(max_tokens=100, temperature=0)] * 2, prompt))
        assert eng.alive
    finally:
        eng.stop()
    assert result == {i: (TEXT, "stop") for i in range(2)}
    assert eng.spec_proposed > eng.spec_accepted  # the rejected draft past the end was counted


def test_plain_steps_test_the_drafts_so_a_sequence_is_drafted_again(monkeypatch) -> None:
    # Start every sequence as if all its drafts had failed: the cost model then decodes it
    # plainly, and only the free check of each plain step's would-be draft (right here: the
    # prompt holds the answer's start) can show that drafting pays again.
    monkeypatch.setattr("chatapi.engine.speculative.PRIOR_ACCEPTED", 0.0)
    runner = FakeRunner()
    runner.config.max_draft = 4
    eng = AsyncEngine(runner, num_slots=4, max_queue=2, spec_draft=4)
    eng.start()
    try:
        result = run(collect(eng, [SamplingParams(max_tokens=100, temperature=0)]))
    finally:
        eng.stop()
    assert result == {0: (TEXT, "stop")}
    assert eng.spec_accepted > 0
