"""Scheduler admission and ordering, with plain sequences (no model)."""

from __future__ import annotations

import pytest

from chatapi.engine.sampling import SamplingParams
from chatapi.engine.scheduler import QueueFullError, Scheduler
from chatapi.engine.sequence import Sequence, SequenceGroup, Status


def group(prompt_len: int = 3, n: int = 1) -> SequenceGroup:
    params = SamplingParams(max_tokens=4)
    seqs = [Sequence(list(range(prompt_len)), params, index=i) for i in range(n)]
    return SequenceGroup(seqs, on_output=lambda outs: None)


def prefill_all(sched: Scheduler) -> None:
    """Run prefill steps until every running leader is decoding (as the engine would)."""
    while True:
        step = sched.schedule()
        if step is None or step.prefill is None:
            return
        step.prefill.seq.num_computed = step.prefill.end
        if step.prefill.is_last:
            for s in step.prefill.seq.group.seqs:
                s.num_computed = s.num_prompt_tokens
                s.output_tokens.append(0)


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


def test_prefill_chunks_depend_only_on_the_prompt() -> None:
    sched = Scheduler(num_slots=2, chunk_size=4, max_waiting=5)
    g = group(prompt_len=10)
    sched.add(g)
    bounds = []
    while (step := sched.schedule()) is not None and step.prefill is not None:
        bounds.append((step.prefill.start, step.prefill.end))
        g.leader.num_computed = step.prefill.end
    assert bounds == [(0, 4), (4, 8), (8, 10)]


def test_prefill_and_decode_alternate() -> None:
    sched = Scheduler(num_slots=2, chunk_size=2, max_waiting=5)
    a = group(prompt_len=2)
    sched.add(a)
    prefill_all(sched)
    b = group(prompt_len=6)
    sched.add(b)
    kinds = []
    for _ in range(6):
        step = sched.schedule()
        if step.prefill:
            kinds.append("P")
            step.prefill.seq.num_computed = step.prefill.end
        else:
            kinds.append("D")
    assert kinds[:5] == ["P", "D", "P", "D", "P"]


def test_forks_are_not_prefilled_and_decode_with_leader() -> None:
    sched = Scheduler(num_slots=4, chunk_size=8, max_waiting=5)
    g = group(prompt_len=3, n=3)
    sched.add(g)
    step = sched.schedule()
    assert step.prefill.seq is g.leader
    prefill_all(sched)
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
    sched = Scheduler(num_slots=3, chunk_size=4, max_waiting=5)
    a, b = make([1, 2, 3, 4, 5, 6]), make([9, 9, 9, 9])
    sched.add(a)
    sched.add(b)
    prefill_all(sched)
    prefill_all(sched)
    finish_all(sched)
    follow = make([1, 2, 3, 4, 5, 6, 0, 7, 8])  # a's prompt + its decoded token + new text
    sched.add(follow)
    step = sched.schedule()
    assert follow.leader.slot == a.leader.slot
    # a's KV holds its prompt; its one sampled token was never fed back, so not cached
    assert follow.leader.num_cached == 6
    assert step.prefill.start == 6 and step.prefill.end == 8  # chunks stay aligned to 4
    assert (a.leader.slot, 6) not in step.trims


def test_unrelated_prompt_takes_the_lowest_free_slot_and_trims_it() -> None:
    sched = Scheduler(num_slots=3, chunk_size=8, max_waiting=5)
    first, second = make([1, 2, 3]), make([4, 5, 6])
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
    assert sched.cached[1] == [4, 5, 6]  # the other cached prefix is kept


def test_prefix_align_rounds_reuse_down() -> None:
    sched = Scheduler(num_slots=1, chunk_size=4, max_waiting=5, prefix_align=4)
    a = make(list(range(10)))
    sched.add(a)
    prefill_all(sched)
    finish_all(sched)
    b = make(list(range(10)) + [50, 51])
    sched.add(b)
    step = sched.schedule()
    assert b.leader.num_cached == 8
    assert (0, 8) in step.trims


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
