"""Scheduler: which sequences run in the next engine step. Pure Python, no llama_cpp import.

Admission is first-come first-served: a request waits until enough slots are free for all of
its choices, and no later request jumps ahead of it. Each prompt is prefilled alone, in chunks
whose boundaries are multiples of the chunk size in absolute positions (so greedy output does not
depend on what else is running, nor on how much of the prompt came from the prefix cache);
decode rows of all running sequences share one step.

Prefix cache: a finished sequence leaves its KV in its slot. A new request takes the free slot
whose cached tokens share the longest prefix with its prompt, and only the rest is prefilled;
with no useful match it takes the lowest-numbered free slot (see `_best_slot`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from chatapi.engine.sequence import Sequence, SequenceGroup, Status


class QueueFullError(RuntimeError):
    """Too many requests are waiting; the client should retry later."""


@dataclass
class PrefillChunk:
    seq: Sequence
    start: int
    end: int

    @property
    def is_last(self) -> bool:
        return self.end == self.seq.num_prompt_tokens

    @property
    def tokens(self) -> list[int]:
        return self.seq.prompt_tokens[self.start:self.end]


@dataclass
class Step:
    prefill: PrefillChunk | None = None
    decode: list[Sequence] = field(default_factory=list)
    # KV to drop before running: (slot, keep) keeps the first `keep` cached tokens of the slot
    trims: list[tuple[int, int]] = field(default_factory=list)


class Scheduler:
    def __init__(self, num_slots: int, chunk_size: int, max_waiting: int,
                 prefix_align: int = 1, prefix_cache: bool = True) -> None:
        self.num_slots = num_slots
        self.chunk_size = chunk_size
        self.max_waiting = max_waiting
        self.prefix_align = max(1, prefix_align)
        self.prefix_cache = prefix_cache
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[Sequence] = []
        self.free_slots: list[int] = list(range(num_slots))
        self.cached: dict[int, list[int]] = {}  # free slot -> tokens whose KV it still holds
        self._last_step_prefilled = False
        self._trims: list[tuple[int, int]] = []

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, group: SequenceGroup) -> None:
        if len(group.seqs) > self.num_slots:
            raise ValueError(f"n={len(group.seqs)} exceeds the {self.num_slots} parallel slots")
        if len(self.waiting) >= self.max_waiting:
            raise QueueFullError(f"{len(self.waiting)} requests are already waiting")
        self.waiting.append(group)

    def schedule(self) -> Step | None:
        """The work of the next step, or None when there is nothing to run."""
        self._admit()
        trims, self._trims = self._trims, []
        prefilling = [s for s in self.running if s.is_prefilling and not _is_fork(s)]
        decoding = [s for s in self.running if not s.is_prefilling]
        # Alternate prefill and decode steps so a new prompt neither waits nor freezes streams.
        if prefilling and not (decoding and self._last_step_prefilled):
            self._last_step_prefilled = True
            seq = prefilling[0]
            start = seq.num_computed
            end = min((start // self.chunk_size + 1) * self.chunk_size, seq.num_prompt_tokens)
            return Step(prefill=PrefillChunk(seq, start, end), trims=trims)
        self._last_step_prefilled = False
        if decoding or trims:
            return Step(decode=decoding, trims=trims)
        return None

    def finish(self, seq: Sequence, status: Status = Status.FINISHED) -> int:
        """Take a sequence out of the running set; its slot keeps the sequence's KV as a
        cached prefix. Returns the freed slot (or -1 if it was not running)."""
        seq.status = status
        if seq not in self.running:
            return -1
        self.running.remove(seq)
        self.free_slots.append(seq.slot)
        if self.prefix_cache:
            self.cached[seq.slot] = self._reusable(seq)
        else:
            self._trims.append((seq.slot, 0))
        return seq.slot

    def _reusable(self, seq: Sequence) -> list[int]:
        """Tokens of a finished sequence whose KV a later prompt may reuse exactly."""
        if self.prefix_align > 1:
            # Only prompt tokens prefilled in whole aligned chunks reproduce bit for bit.
            return seq.prompt_tokens[:min(seq.num_computed, seq.num_prompt_tokens)]
        decoded = seq.output_tokens[:-1] if seq.num_computed >= seq.num_prompt_tokens else []
        return seq.prompt_tokens[:seq.num_computed] + decoded

    def abort(self, group: SequenceGroup) -> list[int]:
        """Drop a request wherever it is; returns the slots whose KV must be cleared."""
        group.aborted = True
        if group in self.waiting:
            self.waiting.remove(group)
        slots = []
        for seq in group.seqs:
            if not seq.is_finished:
                slot = self.finish(seq, Status.ABORTED)
                if slot >= 0:
                    slots.append(slot)
        return slots

    def _admit(self) -> None:
        while self.waiting and len(self.free_slots) >= len(self.waiting[0].seqs):
            group = self.waiting.popleft()
            leader = group.leader
            slot, reuse = self._best_slot(leader.prompt_tokens)
            if leader.params.prompt_logprobs is not None:  # each prompt token must be scored
                reuse = 0
            self._take(leader, slot, reuse)
            for fork in group.forks:
                self._take(fork, min(self.free_slots), 0)

    def _best_slot(self, prompt: list[int]) -> tuple[int, int]:
        """The free slot sharing the longest usable prefix with `prompt`, and that length."""
        # With no useful prefix take the lowest free slot: llama.cpp decodes consecutive slot
        # ids in one ubatch, so a compact set of running slots keeps decode steps batched.
        best_slot, best = min(self.free_slots), 0
        if self.prefix_cache:
            for slot in self.free_slots:
                common = _common_prefix(self.cached.get(slot, ()), prompt)
                # keep at least one prompt token to prefill: it yields the first logits
                usable = min(common, len(prompt) - 1) // self.prefix_align * self.prefix_align
                if usable > best:
                    best_slot, best = slot, usable
        return best_slot, best

    def _take(self, seq: Sequence, slot: int, reuse: int) -> None:
        self.free_slots.remove(slot)
        cached = len(self.cached.pop(slot, ()))
        if cached > reuse or not self.prefix_cache:
            self._trims.append((slot, reuse))
        seq.slot = slot
        seq.num_computed = seq.num_cached = reuse
        seq.status = Status.RUNNING
        self.running.append(seq)

    @property
    def num_cached_tokens(self) -> int:
        return sum(len(tokens) for tokens in self.cached.values())


def _common_prefix(a: list[int] | tuple, b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _is_fork(seq: Sequence) -> bool:
    return seq.group is not None and seq is not seq.group.leader
