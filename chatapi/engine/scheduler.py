"""Scheduler: which sequences run in the next engine step. Pure Python, no llama_cpp import.

Admission is first-come first-served: a request waits until enough slots are free for all of
its choices, and no later request jumps ahead of it. Every step decodes one row for each running
sequence and, beside them, prefills up to `step_tokens` prompt tokens (times the number of
waiting prompts per decoding sequence, and a whole `chunk_size` when none is decoding), so a
long prompt is read a little per step instead of freezing the streams. Prompt chunks of one
length share a llama_decode; decode rows have their own.

Exactness: llama.cpp computes a ubatch of fewer than about 8 tokens of one sequence on other
kernels than a longer one (measured: logits differ by up to 0.3); from 8 tokens on, the
numbers do not depend on where the chunks end. So no chunk is shorter than MIN_CHUNK unless
the whole prompt is, and a prompt's logits (so its first token) do not depend on the load, on
prompts read beside it or on the prefix cache. Decode rows are computed as alone whatever
shares their step: 16 different sequences decoded together gave their lone logits bit for bit.
Both need chatapi's defaults for llama.cpp's kernels: weight repacking off (repacked GEMM
rounds a row by its place in the batch; see use_repack) and ggml's tiled GEMM off (taken for
8+ rows only, it rounds otherwise than one row; see set_tiled_matmul).

Prefix cache: a finished sequence leaves its KV in its slot. A new request takes the free slot
whose cached prompt tokens share the longest prefix with its prompt, and only the rest is
prefilled; with no useful match it takes the lowest-numbered free slot (see `_best_slot`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from chatapi.engine.sequence import Sequence, SequenceGroup, Status

MIN_CHUNK = 8  # fewest prompt tokens in one chunk (see the module docstring)
LONG_PROMPT = 4  # a prompt of more than this many step budgets is read at half a budget per step


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
    prefills: list[PrefillChunk] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)
    # KV to drop before running: (slot, keep) keeps the first `keep` cached tokens of the slot
    trims: list[tuple[int, int]] = field(default_factory=list)


class Scheduler:
    def __init__(self, num_slots: int, chunk_size: int, max_waiting: int,
                 prefix_align: int = 1, prefix_cache: bool = True,
                 step_tokens: int | None = None) -> None:
        self.num_slots = num_slots
        self.chunk_size = max(chunk_size, 2 * MIN_CHUNK)
        self.step_tokens = max(step_tokens or chunk_size, 2 * MIN_CHUNK)
        self.max_waiting = max_waiting
        self.prefix_align = max(1, prefix_align)
        self.prefix_cache = prefix_cache
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[Sequence] = []
        self.free_slots: list[int] = list(range(num_slots))
        self.cached: dict[int, list[int]] = {}  # free slot -> tokens whose KV it still holds
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
        decoding = [s for s in self.running if not s.is_prefilling]
        prefilling = [s for s in self.running if s.is_prefilling and not _is_fork(s)]
        # step_tokens per step and per prompt waiting for each decoding stream: one long prompt
        # barely slows eight streams, and a burst of prompts behind one stream is not read
        # one per step (every waiting client waits for its first token)
        share = -(-len(prefilling) // max(1, len(decoding)))
        budget = min(self.step_tokens * share, self.chunk_size) if decoding else self.chunk_size
        chunks = self._plan(prefilling, budget, bool(decoding)) if prefilling else []
        if chunks or decoding or trims:
            return Step(prefills=chunks, decode=decoding, trims=trims)
        return None

    def _plan(self, prefilling: list[Sequence], budget: int, beside_streams: bool
              ) -> list[PrefillChunk]:
        """This step's prompt chunks. The first waiting prompt always moves on. Prompts that
        can take chunks of one common length share a llama_decode (one ubatch reads the
        weights once for all: 16 prompts of 32 tokens took 2.0 s together, 2.7 s one by
        one); the common length is picked to read the most tokens within the budget."""
        caps = {s: self._cap(s, budget, beside_streams) for s in prefilling}
        first = prefilling[0]
        best: list[PrefillChunk] = [self._chunk(first, caps[first])]
        if len(prefilling) > 1:
            for length in self._common_lengths(prefilling, caps):
                fits = [s for s in prefilling
                        if _can_take(s, length) and length <= caps[s]][:budget // length]
                if first in fits and length * len(fits) > _size(best):
                    best = [PrefillChunk(s, s.num_computed, s.num_computed + length)
                            for s in fits]
        budget -= _size(best)
        for seq in prefilling:  # others, each alone, while the budget lasts
            if budget < 2 * MIN_CHUNK:
                break
            if all(chunk.seq is not seq for chunk in best):
                best.append(self._chunk(seq, min(budget, caps[seq])))
                budget -= best[-1].end - best[-1].start
        return best

    def _common_lengths(self, seqs: list[Sequence], caps: dict[Sequence, int]) -> set[int]:
        """Chunk lengths worth trying for several prompts at once: each one's natural chunk,
        and the shortest remainder less MIN_CHUNK (which every longer prompt can take)."""
        left = [s.num_prompt_tokens - s.num_computed for s in seqs]
        budget = max(caps.values())
        lengths = {self._chunk(s, caps[s]).end - s.num_computed for s in seqs}
        lengths.add(min(min(left) - MIN_CHUNK, budget))
        return {n for n in lengths if MIN_CHUNK <= n <= budget}

    def _cap(self, seq: Sequence, budget: int, beside_streams: bool) -> int:
        """Most tokens of `seq` in this step. Beside running streams, a long prompt (more
        than LONG_PROMPT step budgets to read) gets half a budget: each step that reads a
        chunk is a slower gap for every stream, and a long prompt makes many of them, so
        they are kept shorter (measured, 8 streams and a 3,085-token prompt on a 2-core EPYC:
        gaps of 333 ms at 32 tokens a step, 195 ms at 16, against 85 ms without a prompt;
        the prompt then takes 37 s instead of 32). A short prompt costs a few such gaps, so it
        is read at the whole budget and gets its first token sooner."""
        to_read = seq.num_prompt_tokens - seq.num_cached
        if beside_streams and to_read > LONG_PROMPT * self.step_tokens:
            return min(budget, max(2 * MIN_CHUNK, self.step_tokens // 2))
        return budget

    def _chunk(self, seq: Sequence, budget: int) -> PrefillChunk:
        """The next chunk of a prompt: at most `budget` tokens (the rest of the prompt if that
        fits; a budget is never below 2 * MIN_CHUNK), never leaving a tail shorter than
        MIN_CHUNK."""
        start, total = seq.num_computed, seq.num_prompt_tokens
        end = min(total, start + budget)
        if 0 < total - end < MIN_CHUNK:
            end = total - MIN_CHUNK
        return PrefillChunk(seq, start, end)

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
        # Only prompt tokens: a decoded token's KV comes from a one-token ubatch, whose numbers
        # differ from a prompt chunk's, so reusing it would change the text of the follow-up.
        if seq.num_prompt_tokens < MIN_CHUNK:
            return []
        return seq.prompt_tokens[:min(seq.num_computed, seq.num_prompt_tokens)]

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
                # leave at least one whole chunk to prefill: it yields the first logits
                usable = min(common, len(prompt) - MIN_CHUNK)
                usable = usable // self.prefix_align * self.prefix_align
                if usable > best:
                    best_slot, best = slot, usable
        return best_slot, best

    def _take(self, seq: Sequence, slot: int, reuse: int) -> None:
        self.free_slots.remove(slot)
        self.cached.pop(slot, None)
        self._trims.append((slot, reuse))  # the slot's KV may hold more than its offered tokens
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


def _can_take(seq: Sequence, length: int) -> bool:
    """Whether a chunk of `length` tokens is the rest of the prompt or leaves a whole chunk
    (no prompt is ever left with a tail shorter than MIN_CHUNK); prompt_logprobs are scored
    chunk by chunk and take no part in shared chunks."""
    left = seq.num_prompt_tokens - seq.num_computed
    return seq.params.prompt_logprobs is None and (left == length or left - length >= MIN_CHUNK)


def _size(chunks: list[PrefillChunk]) -> int:
    return sum(chunk.end - chunk.start for chunk in chunks)


def _is_fork(seq: Sequence) -> bool:
    return seq.group is not None and seq is not seq.group.leader
