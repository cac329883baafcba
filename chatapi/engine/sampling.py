"""Sampling parameters of one sequence, validated once, turned into llama.cpp samplers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    # extensions OpenAI does not have (vLLM's names): 0 / 0.0 / 1.0 switch them off
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    # GBNF grammar (llama.cpp syntax, root rule "root") that every generated token must follow
    grammar: str | None = None
    # log-probabilities: None = none; k >= 0 = the chosen token's plus the k most likely
    logprobs: int | None = None
    prompt_logprobs: int | None = None  # the same for every prompt token after the first

    def __post_init__(self) -> None:
        # The API validates first; this guards the engine against any other caller.
        _check(self.max_tokens >= 1, "max_tokens", self.max_tokens)
        _check(_finite(self.temperature) and 0.0 <= self.temperature <= 2.0,
               "temperature", self.temperature)
        _check(_finite(self.top_p) and 0.0 < self.top_p <= 1.0, "top_p", self.top_p)
        _check(_finite(self.presence_penalty) and -2.0 <= self.presence_penalty <= 2.0,
               "presence_penalty", self.presence_penalty)
        _check(_finite(self.frequency_penalty) and -2.0 <= self.frequency_penalty <= 2.0,
               "frequency_penalty", self.frequency_penalty)
        _check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", self.top_k)
        _check(_finite(self.min_p) and 0.0 <= self.min_p <= 1.0, "min_p", self.min_p)
        _check(_finite(self.repetition_penalty) and 0.0 < self.repetition_penalty <= 2.0,
               "repetition_penalty", self.repetition_penalty)
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            _check(value is None or 0 <= value <= MAX_TOP_LOGPROBS, name, value)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return (self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.repetition_penalty != 1.0)


@dataclass(frozen=True)
class TokenLogprob:
    """The log-probability of one token under the model's raw distribution at its position,
    and the `top` most likely tokens there (most likely first)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _check(ok: bool, name: str, value: object) -> None:
    if not ok:
        raise ValueError(f"invalid sampling parameter {name}={value!r}")
