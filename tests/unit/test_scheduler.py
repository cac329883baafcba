"""Scheduler admission and ordering, with plain sequences (no model)."""

from __future__ import annotations

import pytest

from chatapi.engine.sampling import SamplingParams
from chatapi.engine.scheduler import MIN_CHUNK, QueueFullError, Scheduler
from chatapi.engine.sequence import Sequence, SequenceGroup, Status


def group(prompt_len: int = 3, n: int = 1) -> SequenceGroup:
    params = SamplingParams(max_tokens=4)
    seqs = [Sequence(list(range(prompt_len)), params, index=i) for i in range(n)]
    return SequenceGroup(seqs, on_output=lambda outs: None)


def run_prefills(step) -> None:
    """Mark a step's prompt chunks as computed, as the engine would."""
    for chunk in step.prefills:
        chunk.seq.num_computed = chunk.end
        if chunk.is_last:
            for s in chunk.seq.group.seqs:
                s.num_computed = s.num_prompt_tokens
                s.output_tokens.append(0)


def prefill_all(sched: Scheduler) -> None:
    """Run steps until every running leader is decoding."""
    while True:
        step = sched.schedule()
        if step is None or not step.prefills:
            return
        run_prefills(step)


def streams_running(sched: Scheduler, count: int = 1) -> list[SequenceGroup]:
    """`count` short requests admitted and past their prompts: decoding, step after step."""
    groups = [group(prompt_len=2) for _ in range(count)]
    for g in groups:
        sched.add(g)
    prefill_all(sched)
    return groups


def test_admits_in_arrival_order_up_to_free_slots() -> None:
    sched = Scheduler(num_slots=2, chunk_size=8, max_waiting=10)
    groups = [group() for _ in range(3)]
    for g in groups:
        sched.add(g)
    sched.schedule()
    assert [s.group for s in sched.running] == groups[:2]
    assert list(sched.waiting) == [groups[2]]
    assert sorted(s.slot for s in sched.running) == [0, 1]


def test_group_needing_more_slots_is_not_overtaken() -> None:
    sched = Scheduler(num_slots=3, chunk_size=8, max_waiting=10)
    first, big, small = group(), group(n=3), group()
    for g in (first, big, small):
        sched.add(g)
    sched.schedule()
    # big needs 3 slots and only 2 are free: small must wait behind it (FCFS, no starvation)
    assert [s.group for s in sched.running] == [first]
    sched.finish(first.leader)
    sched.schedule()
    assert {s.group for s in sched.running} == {big}
    assert list(sched.waiting) == [small]


def test_queue_full_raises() -> None:
    sched = Scheduler(num_slots=1, chunk_size=8, max_waiting=1)
    sched.add(group())
    with pytest.raises(QueueFullError):
        sched.add(group())


def test_n_larger_than_slots_is_refused() -> None:
    sched = Scheduler(num_slots=2, chunk_size=8, max_waiting=5)
    with pytest.raises(ValueError):
        sched.add(group(n=3))


def chunk_bounds(sched: Scheduler, g: SequenceGroup) -> list[tuple[int, int]]:
    bounds = []
    while (step := sched.schedule()) is not None and step.prefills:
        bounds += [(c.start, c.end) for c in step.prefills]
        run_prefills(step)
    return bounds


def test_prompt_alone_is_read_in_whole_chunks() -> None:
    sched = Scheduler(num_slots=2, chunk_size=32, max_waiting=5, step_tokens=16)
    g = group(prompt_len=70)
    sched.add(g)
    # no stream is decoding: chunk_size per step; the tail is never shorter than MIN_CHUNK
    assert chunk_bounds(sched, g) == [(0, 32), (32, 70 - MIN_CHUNK), (70 - MIN_CHUNK, 70)]


def test_prompt_shares_steps_with_decoding_streams() -> None:
    sched = Scheduler(num_slots=2, chunk_size=64, max_waiting=5, step_tokens=16)
    a, = streams_running(sched)
    b = group(prompt_len=40)
    sched.add(b)
    steps = []
    while (step := sched.schedule()) is not None and b.leader.is_prefilling:
        steps.append(([(c.start, c.end) for c in step.prefills], list(step.decode)))
        run_prefills(step)
    # every step decodes the running stream and reads at most step_tokens of the prompt
    assert steps == [([(0, 16)], [a.leader]), ([(16, 32)], [a.leader]),
                     ([(32, 40)], [a.leader])]


def test_budget_is_shared_by_waiting_prompts_in_arrival_order() -> None:
    sched = Scheduler(num_slots=4, chunk_size=64, max_waiting=5, step_tokens=12)
    a, = streams_running(sched)
    b, c = group(prompt_len=20), group(prompt_len=20)
    for g in (b, c):
        sched.add(g)
    step = sched.schedule()
    # two prompts wait behind one stream: a budget of 2 x 12, and one common length lets
    # both share a llama_decode
    assert [(ch.seq, ch.start, ch.end) for ch in step.prefills] == [(b.leader, 0, 12),
                                                                     (c.leader, 0, 12)]
    assert step.decode == [a.leader]
    run_prefills(step)
    d = group(prompt_len=40)
    sched.add(d)
    step = sched.schedule()
    assert [(ch.seq, ch.start, ch.end) for ch in step.prefills] == [
        (b.leader, 12, 20), (c.leader, 12, 20), (d.leader, 0, 8)]


def test_long_prompt_beside_streams_is_read_at_half_the_step_tokens() -> None:
    sched = Scheduler(num_slots=9, chunk_size=512, max_waiting=10, step_tokens=32)
    streams_running(sched, 8)
    long = group(prompt_len=3000)
    sched.add(long)
    reads = []
    for _ in range(3):
        step = sched.schedule()
        assert len(step.decode) == 8
        reads += [(ch.start, ch.end) for ch in step.prefills]
        run_prefills(step)
    assert reads == [(0, 16), (16, 32), (32, 48)]


def test_short_prompt_beside_streams_gets_the_whole_step_tokens() -> None:
    sched = Scheduler(num_slots=9, chunk_size=512, max_waiting=10, step_tokens=32)
    streams_running(sched, 8)
    sched.add(group(prompt_len=4 * 32))  # not more than LONG_PROMPT budgets: not long
    step = sched.schedule()
    assert [(ch.start, ch.end) for ch in step.prefills] == [(0, 32)]


def test_long_prompt_alone_is_read_in_whole_chunks() -> None:
    sched = Scheduler(num_slots=2, chunk_size=512, max_waiting=10, step_tokens=32)
    sched.add(group(prompt_len=3000))
    step = sched.schedule()
    assert [(ch.start, ch.end) for ch in step.prefills] == [(0, 512)]


def test_first_waiting_prompt_always_moves_on() -> None:
    sched = Scheduler(num_slots=3, chunk_size=64, max_waiting=5, step_tokens=16)
    a, = streams_running(sched)
    b, c = group(prompt_len=30), group(prompt_len=30)
    sched.add(b)
    sched.add(c)
    firsts = []
    while b.leader.is_prefilling:
        step = sched.schedule()
        firsts.append(step.prefills[0].seq)
        run_prefills(step)
    assert set(firsts) == {b.leader}


def test_burst_of_prompts_shares_one_call() -> None:
    sched = Scheduler(num_slots=16, chunk_size=512, max_waiting=20)
    groups = [group(prompt_len=28 + i % 8) for i in range(16)]
    for g in groups:
        sched.add(g)
    step = sched.schedule()
    # nothing decodes: 20 tokens each (the shortest prompt less MIN_CHUNK), all 16 together
    assert len(step.prefills) == 16
    assert {ch.end - ch.start for ch in step.prefills} == {20}


def test_forks_are_not_prefilled_and_decode_with_leader() -> None:
    sched = Scheduler(num_slots=4, chunk_size=8, max_waiting=5)
    g = group(prompt_len=3, n=3)
    sched.add(g)
    step = sched.schedule()
    assert [c.seq for c in step.prefills] == [g.leader]
    run_prefills(step)
    step = sched.schedule()
    assert step.decode == g.seqs


def test_abort_frees_slots_and_waiting_entry() -> None:
    sched = Scheduler(num_slots=1, chunk_size=8, max_waiting=5)
    running, queued = group(), group()
    sched.add(running)
    sched.add(queued)
    sched.schedule()
    assert sched.abort(queued) == []
    assert not sched.waiting
    assert sched.abort(running) == [0]
    assert running.leader.status is Status.ABORTED
    assert sched.free_slots == [0]
    assert sched.schedule() is None


def finish_all(sched: Scheduler) -> None:
    for seq in list(sched.running):
        sched.finish(seq)


def make(prompt: list[int], n: int = 1) -> SequenceGroup:
    seqs = [Sequence(list(prompt), SamplingParams(max_tokens=4), index=i) for i in range(n)]
    return SequenceGroup(seqs, on_output=lambda outs: None)


def test_follow_up_goes_to_the_slot_with_the_longest_prefix() -> None:
    sched = Scheduler(num_slots=3, chunk_size=16, max_waiting=5)
    first = list(range(1, 31))
    a, b = make(first), make([9] * 20)
    sched.add(a)
    sched.add(b)
    prefill_all(sched)
    finish_all(sched)
    follow = make(first + [0, 40, 41, 42, 43, 44, 45, 46, 47, 48])  # + a's reply + new text
    sched.add(follow)
    step = sched.schedule()
    assert follow.leader.slot == a.leader.slot
    # a's prompt is reused; its decoded token and the new text are prefilled (>= MIN_CHUNK)
    assert follow.leader.num_cached == 30
    assert [(c.start, c.end) for c in step.prefills] == [(30, 40)]
    assert (a.leader.slot, 30) in step.trims  # a's reply and anything after go


def test_reuse_leaves_a_whole_chunk_to_prefill() -> None:
    sched = Scheduler(num_slots=1, chunk_size=16, max_waiting=5)
    a = make(list(range(30)))
    sched.add(a)
    prefill_all(sched)
    finish_all(sched)
    same = make(list(range(30)) + [99])
    sched.add(same)
    step = sched.schedule()
    assert same.leader.num_cached == 31 - MIN_CHUNK
    assert (0, 31 - MIN_CHUNK) in step.trims


def test_unrelated_prompt_takes_the_lowest_free_slot_and_trims_it() -> None:
    sched = Scheduler(num_slots=3, chunk_size=8, max_waiting=5)
    first, second = make([1, 2, 3] * 3), make([4, 5, 6] * 3)
    sched.add(first)
    sched.add(second)
    prefill_all(sched)
    prefill_all(sched)
    assert (first.leader.slot, second.leader.slot) == (0, 1)
    sched.finish(second.leader)
    sched.finish(first.leader)
    other = make([7, 8, 9])
    sched.add(other)
    step = sched.schedule()
    # lowest id, not least recently used: running slots stay compact for batched decode
    assert other.leader.slot == 0
    assert (0, 0) in step.trims
    assert other.leader.num_cached == 0
    assert sched.cached[1] == [4, 5, 6] * 3  # the other cached prefix is kept


def test_prefix_align_rounds_reuse_down() -> None:
    sched = Scheduler(num_slots=1, chunk_size=4, max_waiting=5, prefix_align=4)
    a = make(list(range(30)))
    sched.add(a)
    prefill_all(sched)
    finish_all(sched)
    b = make(list(range(30)) + [50] * 10)
    sched.add(b)
    step = sched.schedule()
    assert b.leader.num_cached == 28
    assert (0, 28) in step.trims


def test_prefix_cache_off_always_clears() -> None:
    sched = Scheduler(num_slots=1, chunk_size=8, max_waiting=5, prefix_cache=False)
    a = make([1, 2, 3])
    sched.add(a)
    prefill_all(sched)
    finish_all(sched)
    b = make([1, 2, 3, 4])
    sched.add(b)
    step = sched.schedule()
    assert b.leader.num_cached == 0
    assert (0, 0) in step.trims
