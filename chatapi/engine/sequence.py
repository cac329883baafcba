"""Sequence: all per-request state of one generated choice."""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chatapi.engine.detokenizer import IncrementalDetokenizer
from chatapi.engine.sampling import SamplingParams, TokenLogprob

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"
    ABORTED = "aborted"


@dataclass
class SeqOutput:
    """What one engine step produced for one choice, handed to the API side."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None  # of this step's tokens, when asked for
    prompt_logprobs: list[TokenLogprob | None] | None = None  # first output only, when asked


@dataclass(eq=False)
class Sequence:
    prompt_tokens: list[int]
    params: SamplingParams
    index: int = 0  # choice index within its request
    group: SequenceGroup | None = None
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    slot: int = -1  # llama.cpp seq_id while running
    num_computed: int = 0  # prompt tokens already in the KV cache
    num_cached: int = 0  # of those, tokens reused from the prefix cache
    output_tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # params.prompt_logprobs set
    arrival: float = field(default_factory=time.monotonic)
    detokenizer: IncrementalDetokenizer = field(init=False)

    def __post_init__(self) -> None:
        self.detokenizer = IncrementalDetokenizer(self.params.stop)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_tokens)

    @property
    def num_completion_tokens(self) -> int:
        return len(self.output_tokens)

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status in (Status.FINISHED, Status.ABORTED)

    @property
    def position(self) -> int:
        """Position of the next token to be fed to the model."""
        return self.num_prompt_tokens + self.num_completion_tokens - 1

    @property
    def last_token(self) -> int:
        return self.output_tokens[-1]


@dataclass(eq=False)
class SequenceGroup:
    """The choices of one request (n >= 1); the first one prefills, the others fork from it."""

    seqs: list[Sequence]
    on_output: Callable[[list[SeqOutput]], None]
    request_id: str = ""
    aborted: bool = False

    def __post_init__(self) -> None:
        for seq in self.seqs:
            seq.group = self

    @property
    def leader(self) -> Sequence:
        return self.seqs[0]

    @property
    def forks(self) -> list[Sequence]:
        return self.seqs[1:]

    @property
    def is_finished(self) -> bool:
        return all(seq.is_finished for seq in self.seqs)
