"""Scheduler: which sequences run in the next engine step. Pure Python, no llama_cpp import.

Admission is first-come first-served: a request waits until enough slots are free for all of
its choices, and no later request jumps ahead of it. Each prompt is prefilled alone, in chunks
whose boundaries depend only on the prompt (so greedy output does not depend on what else is
running); decode rows of all running sequences share one step.
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


class Scheduler:
    def __init__(self, num_slots: int, chunk_size: int, max_waiting: int) -> None:
        self.num_slots = num_slots
        self.chunk_size = chunk_size
        self.max_waiting = max_waiting
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[Sequence] = []
        self.free_slots: list[int] = list(range(num_slots - 1, -1, -1))
        self._last_step_prefilled = False

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
        prefilling = [s for s in self.running if s.is_prefilling and not _is_fork(s)]
        decoding = [s for s in self.running if not s.is_prefilling]
        # Alternate prefill and decode steps so a new prompt neither waits nor freezes streams.
        if prefilling and not (decoding and self._last_step_prefilled):
            self._last_step_prefilled = True
            seq = prefilling[0]
            end = min(seq.num_computed + self.chunk_size, seq.num_prompt_tokens)
            return Step(prefill=PrefillChunk(seq, seq.num_computed, end))
        self._last_step_prefilled = False
        if decoding:
            return Step(decode=decoding)
        return None

    def finish(self, seq: Sequence, status: Status = Status.FINISHED) -> int:
        """Take a sequence out of the running set; returns its freed slot (or -1)."""
        seq.status = status
        if seq in self.running:
            self.running.remove(seq)
            self.free_slots.append(seq.slot)
            return seq.slot
        return -1

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
            for seq in group.seqs:
                seq.slot = self.free_slots.pop()
                seq.status = Status.RUNNING
                self.running.append(seq)


def _is_fork(seq: Sequence) -> bool:
    return seq.group is not None and seq is not seq.group.leader
