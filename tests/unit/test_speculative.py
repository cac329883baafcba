"""Prompt-lookup drafting and the choice of how many draft rows a step verifies."""

from __future__ import annotations

from collections.abc import Callable

from chatapi.engine.speculative import (
    DEFAULT_FIXED_ROWS,
    PromptLookup,
    StepCost,
    choose_draft_len,
)


def linear_cost(fixed_rows: float) -> Callable[[int], float]:
    """A step cost of `fixed_rows + rows` (rows' worth of compute)."""
    return lambda rows: fixed_rows + rows


def test_draft_copies_what_followed_the_latest_match() -> None:
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8])
    for token in (1, 2, 3):
        lookup.append(token)
    # suffix [1, 2, 3] last occurred before 7, 8 (the later one wins over 4, 5)
    assert lookup.draft(4) == [7, 8, 1, 2]
    assert lookup.draft(1) == [7]


def test_longest_ngram_wins_over_a_shorter_later_one() -> None:
    lookup = PromptLookup([5, 6, 7, 1, 0, 6, 7, 2, 5, 6, 7])
    # [5, 6, 7] matches at the start (then 1); [6, 7] alone also matches later (then 2)
    assert lookup.draft(1) == [1]


def test_no_match_no_draft() -> None:
    lookup = PromptLookup([1, 2, 3])
    assert lookup.draft(4) == []
    lookup.append(4)
    assert lookup.draft(4) == []


def test_acceptance_starts_at_the_prior_and_follows_records() -> None:
    lookup = PromptLookup([])
    assert lookup.acceptance == 0.5
    lookup.record(96, 0)
    assert lookup.acceptance < 0.05


def test_no_drafts_or_poor_acceptance_means_plain_decoding() -> None:
    assert choose_draft_len([(0, 0.9)] * 4, 4, linear_cost(DEFAULT_FIXED_ROWS)) == 0
    assert choose_draft_len([(4, 0.05)] * 4, 4, linear_cost(DEFAULT_FIXED_ROWS)) == 0


def test_good_drafts_are_verified_more_when_the_step_is_mostly_fixed_cost() -> None:
    alone = choose_draft_len([(8, 0.9)], 8, linear_cost(20.0))
    crowded = choose_draft_len([(8, 0.9)] * 16, 8, linear_cost(20.0))
    assert alone > crowded >= 0
    assert alone >= 4


def test_step_cost_fit_recovers_fixed_over_per_row() -> None:
    cost = StepCost()
    assert cost.fixed_rows == DEFAULT_FIXED_ROWS  # nothing measured yet
    for rows in (1, 2, 4, 8, 16) * 4:
        cost.observe(rows, 0.030 + 0.005 * rows)
    assert abs(cost.fixed_rows - 6.0) < 1e-6


def test_acceptance_recovers_when_the_text_starts_repeating() -> None:
    # prose first (every draft fails), then copied code (every draft holds): the old failures
    # fade, so the sequence is worth drafting again; a running total would stay at 1/2 or less
    lookup = PromptLookup([1, 2, 3])
    lookup.record(20, 0)
    assert lookup.acceptance < 0.2
    for _ in range(20):
        lookup.record(1, 1)
    assert lookup.acceptance > 0.6
    assert choose_draft_len([(4, lookup.acceptance)] * 4, 4, linear_cost(DEFAULT_FIXED_ROWS)) > 0


def test_measured_step_costs_replace_the_linear_guess() -> None:
    # A machine whose one-row step is cheap and whose few-row steps are not (measured on an
    # EPYC: 15 ms for 1 row, 50 ms for 4): one stream must not be drafted even with good
    # acceptance, once the two-row cost is known; the guess alone would draft.
    cost = StepCost()
    good = [(4, 0.8)]
    assert choose_draft_len(good, 4, cost) > 0  # nothing measured: the linear guess
    for _ in range(3):
        cost.observe(1, 0.015)
    assert choose_draft_len(good, 4, cost) > 0  # 2..5 rows scaled from the one-row time
    for rows in (2, 3, 4, 5):
        for _ in range(3):
            cost.observe(rows, 0.015 + 0.012 * rows)
    assert cost(5) == 0.075  # measured, not fitted
    assert choose_draft_len(good, 4, cost) == 0
    # where the rows come cheap (a Xeon: 37 / 41 / 57 ms for 1 / 2 / 4 rows) it drafts
    xeon = StepCost()
    for rows, ms in ((1, 37), (2, 41), (3, 49), (4, 57), (5, 65)):
        for _ in range(3):
            xeon.observe(rows, ms / 1000)
    assert choose_draft_len(good, 4, xeon) >= 3
