"""Logprob shapes (chat and legacy) from engine TokenLogprobs, without a model."""

from __future__ import annotations

import pytest

from chatapi.api.logprobs import LegacyLogprobs, chat_logprobs, merge_legacy, token_text
from chatapi.engine.sampling import SamplingParams, TokenLogprob

PIECES = {1: b"Hi", 2: b" there", 3: b"\xe4\xbd", 4: b"\xa0", 5: b"!"}  # 3+4 = "你"


def piece(token: int) -> bytes:
    return PIECES[token]


def test_token_text_shows_partial_characters_as_escapes() -> None:
    assert token_text(b"Hi") == "Hi"
    assert token_text(b"\xe4\xbd") == "\\xe4\\xbd"


def test_chat_entries() -> None:
    entries = chat_logprobs(piece, [TokenLogprob(1, -0.1, ((1, -0.1), (2, -2.5)))])
    assert entries == [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
        {"token": " there", "logprob": -2.5, "bytes": [32, 116, 104, 101, 114, 101]}]}]


def test_legacy_offsets_count_whole_characters() -> None:
    legacy = LegacyLogprobs(piece)
    legacy.add(1, None)  # first prompt token: no logprob
    legacy.add(3, TokenLogprob(3, -0.5))
    first = legacy.take()
    legacy.add(4, TokenLogprob(4, -0.01, ((5, -0.001),)))
    legacy.add(5, TokenLogprob(5, -0.2))
    merged = merge_legacy([first, legacy.take()])
    assert merged["tokens"] == ["Hi", "\\xe4\\xbd", "\\xa0", "!"]
    assert merged["text_offset"] == [0, 2, 2, 3]  # "Hi" + "你" + "!"
    assert merged["token_logprobs"] == [None, -0.5, -0.01, -0.2]
    # the sampled token is always among the top ones
    assert merged["top_logprobs"] == [None, {"\\xe4\\xbd": -0.5}, {"!": -0.001, "\\xa0": -0.01},
                                      {"!": -0.2}]


@pytest.mark.parametrize("field", ["logprobs", "prompt_logprobs"])
def test_sampling_params_bound_logprobs(field: str) -> None:
    SamplingParams(max_tokens=1, **{field: 20})
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=1, **{field: 21})


@pytest.mark.parametrize(("field", "value"), [("top_k", -1), ("min_p", 1.5),
                                              ("repetition_penalty", 0.0)])
def test_sampling_params_refuse_bad_extensions(field: str, value: float) -> None:
    with pytest.raises(ValueError):
        SamplingParams(max_tokens=1, **{field: value})
