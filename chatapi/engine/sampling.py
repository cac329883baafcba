"""Sampling parameters of one sequence, validated once, turned into llama.cpp samplers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


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

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _check(ok: bool, name: str, value: object) -> None:
    if not ok:
        raise ValueError(f"invalid sampling parameter {name}={value!r}")
