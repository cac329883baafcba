"""AsyncEngine: the asyncio face of the engine thread that owns llama.cpp.

The API side calls `generate()` and iterates over lists of SeqOutput; the engine thread runs
schedule -> decode -> sample -> postprocess steps and hands each step's outputs back to the
event loop with one `call_soon_threadsafe` per request per step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import replace

from chatapi.engine.runner import Row, Runner, RunnerError, Sampler, SamplerError
from chatapi.engine.sampling import SamplingParams, TokenLogprob
from chatapi.engine.scheduler import PrefillChunk, QueueFullError, Scheduler, Step
from chatapi.engine.sequence import SeqOutput, Sequence, SequenceGroup, Status
from chatapi.engine.speculative import PromptLookup, StepCost, choose_draft_len

log = logging.getLogger("chatapi.engine")


class EngineDeadError(RuntimeError):
    """The engine thread has stopped; no request can be served."""


class AsyncEngine:
    def __init__(self, runner: Runner, *, num_slots: int, max_queue: int,
                 prefix_cache: bool = True, prefix_align: int = 1,
                 step_tokens: int | None = None, spec_draft: int = 0) -> None:
        self.runner = runner
        self.num_slots = num_slots
        self.max_queue = max_queue
        self.scheduler = Scheduler(num_slots, runner.config.batch_size, max_waiting=1 << 30,
                                   prefix_align=prefix_align, prefix_cache=prefix_cache,
                                   step_tokens=step_tokens)
        self._inbox: deque[tuple[str, SequenceGroup]] = deque()
        self._wakeup = threading.Condition()
        self._samplers: dict[int, Sampler] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.error: BaseException | None = None
        self.in_flight = 0  # sequences accepted and not yet finished (event-loop side)
        self.steps = 0
        self.on_step: Callable[[int, int], None] | None = None  # (rows decoded, running)
        # prompt-lookup speculative decoding (chatapi.engine.speculative); 0 = off
        self.spec_draft = max(0, min(spec_draft, runner.config.max_draft))
        self._lookups: dict[int, PromptLookup] = {}
        self._step_cost = StepCost()
        self.spec_proposed = 0  # draft tokens verified
        self.spec_accepted = 0  # of those, kept

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chatapi-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self.runner.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    # --- event-loop side ----------------------------------------------------------------------

    def generate(self, prompt_tokens: list[int], params: list[SamplingParams],
                 request_id: str = "") -> GenerationStream:
        """Submit one prompt for len(params) choices. Raises at once when the engine is dead or
        the queue is full; use the returned stream as a context manager so it is always closed."""
        if not self.alive:
            raise EngineDeadError("the engine is not running")
        if self.in_flight + len(params) > self.num_slots + self.max_queue:
            raise QueueFullError(
                f"The server is busy: {self.in_flight} sequences in flight "
                f"(limit {self.num_slots} running + {self.max_queue} queued). Retry shortly.")
        queue: asyncio.Queue[list[SeqOutput]] = asyncio.Queue()
        seqs = [Sequence(list(prompt_tokens), p, index=i) for i, p in enumerate(params)]
        group = SequenceGroup(seqs, _hand_off(asyncio.get_running_loop(), queue), request_id)
        self.in_flight += len(seqs)
        self._post("add", group)
        return GenerationStream(self, group, queue)

    def _post(self, action: str, group: SequenceGroup) -> None:
        with self._wakeup:
            self._inbox.append((action, group))
            self._wakeup.notify()

    # --- engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._wakeup:
                    while not self._inbox and not self._stopping and not self.scheduler.has_work:
                        self._wakeup.wait()
                    if self._stopping:
                        break
                    inbox = list(self._inbox)
                    self._inbox.clear()
                self._ingest(inbox)
                step = self.scheduler.schedule()
                if step is not None:
                    self._execute(step)
                    self.steps += 1
                    if self.on_step is not None:
                        self.on_step(len(step.decode), len(self.scheduler.running))
        except BaseException as exc:  # the thread must report its death, never vanish
            log.exception("engine thread died")
            self.error = exc
            self._fail_all(f"engine failure: {exc}")

    def _ingest(self, inbox: list[tuple[str, SequenceGroup]]) -> None:
        for action, group in inbox:
            if action == "add":
                try:
                    for seq in group.seqs:  # a sampler that fails, fails this request only
                        self._sampler(seq)
                    self.scheduler.add(group)
                except Exception as exc:  # noqa: BLE001 - one request must not stop the engine
                    if not isinstance(exc, QueueFullError | ValueError):
                        log.exception("cannot start a request")
                        exc = RuntimeError("the request's sampler could not be created")
                    self._free_samplers(group.seqs)
                    group.on_output([SeqOutput(s.index, "", [], error=str(exc))
                                     for s in group.seqs])
            else:
                self.scheduler.abort(group)  # the slots keep their KV as cached prefixes
                self._free_samplers(group.seqs)

    def _execute(self, step: Step) -> None:
        for slot, keep in step.trims:
            self.runner.trim_slot(slot, keep)
        # Prompt chunks first: a prompt that ends in this step sends its first token before
        # the streams' decode part, not after it (a new request's wait is shorter by one
        # decode call); for the running streams each step takes as long in either order.
        for chunks in _shared_calls(step.prefills):
            self._run_part([s for chunk in chunks for s in chunk.seq.group.seqs],
                           lambda outputs, chunks=chunks: self._prefill(chunks, outputs))
        if step.decode:
            self._run_part(step.decode, lambda outputs: self._decode(step.decode, outputs))

    def _run_part(self, seqs: list[Sequence],
                  work: Callable[[dict[SequenceGroup, list[SeqOutput]]], None]) -> None:
        """Run one llama_decode's worth of the step and hand its outputs over at once; a
        failed decode ends the sequences it held, and only those."""
        outputs: dict[SequenceGroup, list[SeqOutput]] = defaultdict(list)
        try:
            work(outputs)
        except Exception as exc:  # noqa: BLE001 - the other requests must go on
            if isinstance(exc, RunnerError):
                log.error("step failed: %s", exc)
            else:
                log.exception("step failed")
                exc = RuntimeError(f"internal error in the engine step: {exc}")
            for seq in seqs:
                if not seq.is_finished:
                    self._finish(seq, None)
                    outputs[seq.group].append(self._output(seq, "", [], error=str(exc)))
        for group, outs in outputs.items():
            group.on_output(outs)

    def _prefill(self, chunks: list[PrefillChunk],
                 outputs: dict[SequenceGroup, list[SeqOutput]]) -> None:
        """Prompt chunks of one length, in one llama_decode."""
        rows: list[Row] = []
        starts = []
        for chunk in chunks:
            seq = chunk.seq
            scored = seq.params.prompt_logprobs is not None  # every prompt row is scored
            starts.append(len(rows))
            rows += [Row(tok, chunk.start + i, seq.slot, scored)
                     for i, tok in enumerate(chunk.tokens)]
            if chunk.is_last:
                rows[-1] = replace(rows[-1], logits=True)
        self.runner.decode(rows)
        for chunk, first_row in zip(chunks, starts, strict=True):
            seq = chunk.seq
            if seq.params.prompt_logprobs is not None:
                self._score_prompt(seq, chunk.start, chunk.end, first_row)
            seq.num_computed = chunk.end
            if not chunk.is_last:
                continue
            for fork in seq.group.forks:
                self.runner.copy_slot(seq.slot, fork.slot)
                fork.num_computed = fork.num_prompt_tokens
            for s in seq.group.seqs:
                self._sample(s, first_row + chunk.end - chunk.start - 1, outputs)

    def _decode(self, seqs: list[Sequence], outputs: dict[SequenceGroup, list[SeqOutput]]
                ) -> None:
        seqs = sorted(seqs, key=lambda s: s.slot)  # consecutive slots share one ubatch
        drafts, guesses = self._drafts(seqs)
        width = 1 + len(drafts[0][0])  # rows per sequence, the same for all
        rows = []
        for seq, (draft, _) in zip(seqs, drafts, strict=True):
            rows.append(Row(seq.last_token, seq.position, seq.slot, True))
            rows += [Row(tok, seq.position + 1 + j, seq.slot, True)
                     for j, tok in enumerate(draft)]
        if self.spec_draft:  # the draft-width choice runs on measured step costs
            started = time.perf_counter()
            self.runner.decode(rows)
            self._step_cost.observe(len(rows), time.perf_counter() - started)
        else:
            self.runner.decode(rows)
        for i, (seq, (draft, real)) in enumerate(zip(seqs, drafts, strict=True)):
            lookup = self._lookups.get(seq.seq_id)  # taken first: a finished sequence drops it
            produced = seq.num_completion_tokens
            kept = self._verify(seq, draft, i * width, outputs)
            if real:  # padding rows are not drafts: they count for nothing
                if lookup is not None:
                    lookup.record(real, min(kept, real))
                self.spec_proposed += real
                self.spec_accepted += min(kept, real)
            elif guesses[i] is not None and lookup is not None \
                    and seq.num_completion_tokens > produced:
                # a plain step: would the draft's first token have been kept?
                lookup.record(1, int(seq.output_tokens[produced] == guesses[i]))
            if not seq.is_finished and kept < len(draft):
                # the rejected draft rows left KV past the last accepted token: drop it
                self.runner.trim_slot(seq.slot, seq.position)

    def _verify(self, seq: Sequence, draft: list[int], base: int,
                outputs: dict[SequenceGroup, list[SeqOutput]]) -> int:
        """Sample the sequence's rows in order while the sampler agrees with the draft;
        returns how many draft tokens were kept."""
        for j in range(len(draft) + 1):
            token = self._sample(seq, base + j, outputs)
            if seq.is_finished or j == len(draft) or token != draft[j]:
                return j
        return len(draft)

    def _drafts(self, seqs: list[Sequence]
                ) -> tuple[list[tuple[list[int], int]], list[int | None]]:
        """Per sequence (draft tokens padded to one common length, real draft length), no
        draft tokens at all when this step decodes plainly; and, for a plain step, each
        sequence's would-be first draft token (None where it has none), checked afterwards
        against the token sampled."""
        plain: list[tuple[list[int], int]] = [([], 0)] * len(seqs)
        if not self.spec_draft:
            return plain, [None] * len(seqs)
        found = []
        for seq in seqs:
            lookup = self._lookups.get(seq.seq_id)
            if lookup is None:
                lookup = self._lookups[seq.seq_id] = PromptLookup(
                    seq.prompt_tokens + seq.output_tokens)
            room = min(self.spec_draft, seq.params.max_tokens - seq.num_completion_tokens - 1,
                       self.runner.config.ctx_size - seq.position - 2)
            found.append((lookup.draft(room) if room > 0 else [], lookup.acceptance))
        width = choose_draft_len([(len(d), rate) for d, rate in found], self.spec_draft,
                                 self._step_cost)
        if not width or any(s.position + width >= self.runner.config.ctx_size for s in seqs):
            return plain, [draft[0] if draft else None for draft, _ in found]
        drafts = []
        for (draft, _), seq in zip(found, seqs, strict=True):
            real = min(len(draft), width)
            pad = [draft[-1] if draft else seq.last_token] * (width - real)
            drafts.append((draft[:real] + pad, real))
        return drafts, [None] * len(seqs)

    def _sample(self, seq: Sequence, row: int,
                outputs: dict[SequenceGroup, list[SeqOutput]]) -> int | None:
        try:
            token = self.runner.sample(self._sampler(seq), row)
        except SamplerError as exc:  # this sequence's grammar is stuck: it ends alone
            self._finish(seq, None)
            outputs[seq.group].append(self._output(seq, "", [], error=str(exc)))
            return None
        top = seq.params.logprobs
        logprob = None if top is None else self.runner.logprobs(row, token, top)
        self._append(seq, token, logprob, outputs)
        return token

    def _score_prompt(self, seq: Sequence, start: int, end: int, first_row: int) -> None:
        """Log-probabilities of the prompt tokens that positions start..end-1 predict (batch
        rows from first_row on)."""
        top = seq.params.prompt_logprobs or 0
        if seq.prompt_logprobs is None:  # the first token (and any reused prefix) has none
            seq.prompt_logprobs = [None] * (start + 1)
        scores = seq.prompt_logprobs
        for i, target in enumerate(seq.prompt_tokens[start + 1:end + 1]):
            scores.append(self.runner.logprobs(first_row + i, target, top))

    def _append(self, seq: Sequence, token: int, logprob: TokenLogprob | None,
                outputs: dict[SequenceGroup, list[SeqOutput]]) -> None:
        seq.output_tokens.append(token)
        lookup = self._lookups.get(seq.seq_id)
        if lookup is not None:
            lookup.append(token)
        detok = seq.detokenizer
        finish = None
        if self.runner.is_eog(token):
            text, finish = detok.finish(), "stop"
            logprob = None  # the end token is not part of the text
        else:
            text = detok.feed(self.runner.token_bytes(token))
            if detok.stopped:
                finish = "stop"
            elif (seq.num_completion_tokens >= seq.params.max_tokens
                  or seq.position + 1 >= self.runner.config.ctx_size):
                text, finish = text + detok.finish(), "length"
        if finish:
            self._finish(seq, finish)
        out = self._output(seq, text, [token], finish)
        out.logprobs = None if logprob is None else [logprob]
        if seq.num_completion_tokens == 1:
            out.prompt_logprobs = seq.prompt_logprobs
        outputs[seq.group].append(out)

    def _output(self, seq: Sequence, text: str, tokens: list[int], finish: str | None = None,
                error: str | None = None) -> SeqOutput:
        return SeqOutput(seq.index, text, tokens, finish, error, seq.num_prompt_tokens,
                         seq.num_completion_tokens, seq.num_cached)

    def _finish(self, seq: Sequence, reason: str | None) -> None:
        seq.finish_reason = reason
        self.scheduler.finish(seq, Status.FINISHED)
        self._free_samplers([seq])

    def _sampler(self, seq: Sequence) -> Sampler:
        sampler = self._samplers.get(seq.seq_id)
        if sampler is None:
            params = seq.params
            if params.seed is not None and seq.index:
                params = replace(params, seed=params.seed + seq.index)  # n>1: distinct choices
            sampler = self._samplers[seq.seq_id] = self.runner.new_sampler(params)
        return sampler

    def _free_samplers(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            self._lookups.pop(seq.seq_id, None)
            sampler = self._samplers.pop(seq.seq_id, None)
            if sampler is not None:
                sampler.free()

    def _fail_all(self, message: str) -> None:
        groups = {s.group for s in self.scheduler.running}
        groups.update(self.scheduler.waiting)
        groups.update(g for action, g in self._inbox if action == "add")
        for group in groups:
            group.on_output([SeqOutput(s.index, "", [], error=message) for s in group.seqs])


def _shared_calls(chunks: list[PrefillChunk]) -> list[list[PrefillChunk]]:
    """Chunks grouped by length, each group in slot order: llama.cpp puts sequences with the
    same number of tokens and consecutive ids in one ubatch. Scored chunks go alone."""
    groups: dict[object, list[PrefillChunk]] = defaultdict(list)
    for chunk in chunks:
        alone = chunk.seq.params.prompt_logprobs is not None
        groups[chunk.seq if alone else chunk.end - chunk.start].append(chunk)
    return [sorted(group, key=lambda c: c.seq.slot) for group in groups.values()]


class GenerationStream:
    """Async iterator over the outputs of one request; closing it early aborts the request."""

    def __init__(self, engine: AsyncEngine, group: SequenceGroup,
                 queue: asyncio.Queue[list[SeqOutput]]) -> None:
        self._engine = engine
        self._group = group
        self._queue = queue
        self.remaining = len(group.seqs)
        self._closed = False

    @property
    def num_prompt_tokens(self) -> int:
        return self._group.leader.num_prompt_tokens

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> list[SeqOutput]:
        if self.remaining == 0:
            self.close()
            raise StopAsyncIteration
        outputs = await self._queue.get()
        self.remaining -= sum(1 for o in outputs if o.finish_reason or o.error)
        return outputs

    def close(self) -> None:
        """Release the request; if it is still generating, abort it within one step."""
        if self._closed:
            return
        self._closed = True
        self._engine.in_flight -= len(self._group.seqs)
        if self.remaining:
            self._engine._post("abort", self._group)


def _hand_off(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[list[SeqOutput]]
              ) -> Callable[[list[SeqOutput]], None]:
    def deliver(outputs: list[SeqOutput]) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, outputs)
    return deliver
