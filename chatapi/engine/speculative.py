"""Prompt-lookup speculative decoding: drafts, and how many to verify in a step.

A sequence's next tokens are guessed by finding its latest n-gram earlier in its own text
(prompt and output) and copying what followed it there: code edits, quotes and JSON repeat a
lot. The engine verifies the drafts of all running sequences in the step's one batched
llama_decode and keeps each draft token only while the sampler, run on the model's logits row
by row, picks that very token; so every emitted token is the one plain decoding would sample
from the same logits, and a wrong guess costs compute, never correctness.

Drafts are not free: llama.cpp batches sequences of one ubatch only when each brings the same
number of rows, so a step gives every sequence the same number of draft rows K (padding short
drafts), and K is chosen to maximise expected tokens per second from each sequence's acceptance
rate and the measured cost of steps of each size; K = 0 (plain decoding) whenever drafting would
not pay. Step cost is measured per row count, not assumed linear: on one 2-core EPYC a one-row
step took 15 ms and a four-row one 50 ms, so verifying even one draft token there costs more
than it can save, while on a Xeon (37 / 41 / 57 ms for 1 / 2 / 4 rows) drafts pay well. Row
counts not measured yet are estimated from the nearest measured one by a linear fit.

Acceptance follows the text as it goes: a code edit often opens with prose (drafts fail) and
then copies code (drafts hold), so old outcomes fade (ACCEPT_DECAY per draft token). And a
plain step still tests each sequence's would-be first draft token against the token actually
sampled, for free; so a sequence whose drafts failed once is drafted again when its text starts
repeating, instead of staying on plain decoding for good.
"""

from __future__ import annotations

from collections.abc import Callable

NGRAM_SIZES = (4, 3, 2)  # longest match first
PRIOR_PROPOSED = 4.0  # a new sequence starts as if 2 of 4 drafts had been accepted
PRIOR_ACCEPTED = 2.0
DEFAULT_FIXED_ROWS = 4.5  # fixed step cost in rows' worth of compute, until measured
MIN_SAMPLES = 3  # steps of one row count before their measured time is trusted
COST_EMA = 0.1  # weight of a new step time once a row count has 1/COST_EMA samples
ACCEPT_DECAY = 0.95  # weight of past draft outcomes, per newer draft token (~20 tokens' memory)


class PromptLookup:
    """The token history of one sequence, indexed by n-gram for drafting."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        # n-gram -> index of the token that followed its latest occurrence
        self._index: dict[tuple[int, ...], int] = {}
        self.proposed = PRIOR_PROPOSED
        self.accepted = PRIOR_ACCEPTED
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        tokens = self.tokens
        end = len(tokens)
        for n in NGRAM_SIZES:
            if end >= n:
                self._index[tuple(tokens[end - n:end])] = end
        tokens.append(token)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest
        suffix n-gram; empty when the suffix never occurred before."""
        tokens = self.tokens
        for n in NGRAM_SIZES:
            if len(tokens) <= n:
                continue
            follow = self._index.get(tuple(tokens[-n:]))
            if follow is not None:
                return tokens[follow:follow + limit]
        return []

    @property
    def acceptance(self) -> float:
        return self.accepted / self.proposed

    def record(self, proposed: int, accepted: int) -> None:
        """`accepted` of `proposed` draft tokens were kept; older outcomes weigh less."""
        fade = ACCEPT_DECAY ** proposed
        self.proposed = self.proposed * fade + proposed
        self.accepted = self.accepted * fade + accepted


class StepCost:
    """Decode step time by row count: the running mean (then moving average) of the steps of
    each row count, and a least-squares fit of time = fixed + per_row * rows over all steps
    to estimate the row counts not measured yet."""

    def __init__(self) -> None:
        self._n = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self._mean: dict[int, float] = {}
        self._count: dict[int, int] = {}

    def __call__(self, rows: int) -> float:
        """A step's time for `rows` rows (in seconds once anything was measured)."""
        measured = [r for r, c in self._count.items() if c >= MIN_SAMPLES]
        if rows in measured:
            return self._mean[rows]
        fixed = self.fixed_rows
        if not measured:
            return fixed + rows
        near = min(measured, key=lambda r: (abs(r - rows), r))
        return self._mean[near] * (fixed + rows) / (fixed + near)

    def observe(self, rows: int, seconds: float) -> None:
        count = self._count[rows] = self._count.get(rows, 0) + 1
        weight = max(1.0 / count, COST_EMA)
        self._mean[rows] = self._mean.get(rows, seconds) * (1 - weight) + seconds * weight
        self._n += 1
        self._sx += rows
        self._sy += seconds
        self._sxx += rows * rows
        self._sxy += rows * seconds
        if self._n > 4096:  # keep following the machine: halve the weight of the past
            self._n, self._sx, self._sy = self._n / 2, self._sx / 2, self._sy / 2
            self._sxx, self._sxy = self._sxx / 2, self._sxy / 2

    @property
    def fixed_rows(self) -> float:
        """The fixed part of a step expressed in rows (fixed / per_row)."""
        spread = self._n * self._sxx - self._sx * self._sx
        if self._n < 8 or spread <= 1e-9 * max(1.0, self._n * self._sxx):
            return DEFAULT_FIXED_ROWS
        per_row = (self._n * self._sxy - self._sx * self._sy) / spread
        fixed = (self._sy - per_row * self._sx) / self._n
        if per_row <= 0 or fixed <= 0:
            return DEFAULT_FIXED_ROWS
        return min(fixed / per_row, 64.0)


def choose_draft_len(drafts: list[tuple[int, float]], max_len: int,
                     step_cost: Callable[[int], float]) -> int:
    """The K (0..max_len) that maximises expected tokens per unit of step time, for sequences
    given as (draft length available, acceptance rate); every sequence then decodes K+1 rows,
    and step_cost(rows) is the time of a step of that many rows."""
    n = len(drafts)
    best_k, best_rate = 0, n / step_cost(n)
    for k in range(1, max_len + 1):
        expected = n
        for available, rate in drafts:
            term = 1.0
            for _ in range(min(k, available)):
                term *= rate
                expected += term
        score = expected / step_cost(n * (k + 1))
        if score > best_rate * 1.02:  # a drafted step must win clearly, or plain decoding
            best_k, best_rate = k, score
    return best_k
