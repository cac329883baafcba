"""IncrementalDetokenizer: UTF-8 safety and stop-string hold-back, checked at every step."""

from __future__ import annotations

import random
from collections.abc import Sequence

from chatapi.engine.detokenizer import IncrementalDetokenizer

REPLACEMENT = "\ufffd"


def run(pieces: Sequence[bytes], stop: Sequence[str] = ()) -> tuple[list[str], str]:
    """Feed every piece, then finish; return each feed's output and the finish output."""
    detok = IncrementalDetokenizer(stop)
    outputs = [detok.feed(piece) for piece in pieces]
    return outputs, detok.finish()


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def expected_output(text: str, stops: Sequence[str]) -> str:
    """Reference: cut before the stop that completes first (earliest start on a tie)."""
    found = [(text.find(s) + len(s), text.find(s)) for s in stops if s and s in text]
    return text[: min(found)[1]] if found else text


def test_chinese_split_at_every_byte_boundary_reassembles_without_replacement() -> None:
    text = "你好，世界！中文分词测试。"
    data = text.encode()
    for cut in range(1, len(data)):
        outputs, tail = run(split_at(data, [cut]))
        assert "".join(outputs) + tail == text
        assert all(REPLACEMENT not in out for out in [*outputs, tail])


def test_chinese_one_byte_per_token_emits_only_whole_characters() -> None:
    text = "汉字"
    outputs, tail = run([bytes([b]) for b in text.encode()])
    assert outputs == ["", "", "汉", "", "", "字"]
    assert tail == ""


def test_four_byte_emoji_split_every_way() -> None:
    text = "ok 😀👍🏽!"
    data = text.encode()
    for first in range(1, len(data)):
        for second in range(first + 1, len(data)):
            outputs, tail = run(split_at(data, [first, second]))
            assert "".join(outputs) + tail == text
            assert REPLACEMENT not in "".join(outputs)


def test_incomplete_trailing_character_is_dropped_at_finish() -> None:
    detok = IncrementalDetokenizer()
    assert detok.feed(b"abc" + "😀".encode()[:3]) == "abc"
    assert detok.finish() == ""
    assert detok.text == "abc"


def test_invalid_bytes_in_the_middle_become_replacement_characters() -> None:
    detok = IncrementalDetokenizer()
    assert detok.feed(b"a\xffb") == f"a{REPLACEMENT}b"


def test_stop_split_across_tokens_is_never_partially_emitted() -> None:
    pieces = [b"Hello", b" <", b"|e", b"nd", b"|> ", b"ignored"]
    detok = IncrementalDetokenizer(["<|end|>"])
    shown = ""
    for piece in pieces:
        shown += detok.feed(piece)
        assert "<" not in shown, f"part of the stop string leaked: {shown!r}"
    shown += detok.finish()
    assert shown == "Hello "
    assert detok.stopped
    assert detok.stop_string == "<|end|>"
    assert detok.text == "Hello "


def test_stop_in_the_middle_of_a_token_cuts_there() -> None:
    detok = IncrementalDetokenizer(["STOP"])
    assert detok.feed(b"abc") == "abc"
    assert detok.feed(b"deSTOPfgh") == "de"
    assert detok.stopped
    assert detok.feed(b"more") == ""
    assert detok.finish() == ""
    assert detok.text == "abcde"


def test_two_stops_the_earliest_wins() -> None:
    detok = IncrementalDetokenizer(["world", "lo"])
    assert detok.feed(b"hello world") == "hel"
    assert detok.stop_string == "lo"


def test_stop_contained_in_another_wins_however_the_text_is_split() -> None:
    # "bc" completes before "abcd" could, so a streaming engine must stop there.
    for pieces in ([b"abcd"], [b"a", b"b", b"c", b"d"], [b"ab", b"cd"]):
        outputs, tail = run(pieces, ["abcd", "bc"])
        assert "".join(outputs) + tail == "a", pieces


def test_held_back_prefix_is_released_by_finish_when_not_a_stop() -> None:
    detok = IncrementalDetokenizer(["</s>"])
    assert detok.feed(b"answer </") == "answer "
    assert detok.finish() == "</"
    assert not detok.stopped
    assert detok.stop_string is None
    assert detok.text == "answer </"


def test_prefix_of_stop_then_divergence_releases_the_text() -> None:
    detok = IncrementalDetokenizer(["###"])
    assert detok.feed(b"a#") == "a"
    assert detok.feed(b"#") == ""
    assert detok.feed(b"b") == "##b"
    assert not detok.stopped


def test_divergence_keeps_holding_a_later_prefix() -> None:
    detok = IncrementalDetokenizer(["abab"])
    assert detok.feed(b"aba") == ""
    assert detok.feed(b"c") == "abac"
    assert detok.feed(b"ab") == ""
    assert detok.feed(b"ab") == ""
    assert detok.text == "abac"
    assert detok.stopped


def test_empty_stop_strings_are_ignored() -> None:
    outputs, tail = run([b"hi", b" there"], ["", ""])
    assert outputs == ["hi", " there"]
    assert tail == ""


def test_held_text_stays_within_the_longest_stop() -> None:
    detok = IncrementalDetokenizer(["xyz"])
    detok.feed(b"x" * 10_000)
    assert detok.feed(b"x") == "x"  # only the last "x" could still start "xyz"


def test_random_splits_match_the_reference() -> None:
    rng = random.Random(20240601)
    alphabet = ["a", "b", " ", "中", "é", "😀", "\n"]
    stop_sets = [["ab"], ["a中b"], ["😀 "], ["ab", "b中"], ["aaa", "\n\n"], ["ba", "a"], []]
    for _ in range(3000):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 30)))
        stops = rng.choice(stop_sets)
        data = text.encode()
        cuts = rng.sample(range(1, len(data)), k=rng.randint(0, max(0, len(data) - 1)))
        expected = expected_output(text, stops)
        detok = IncrementalDetokenizer(stops)
        shown = ""
        for piece in split_at(data, cuts):
            shown += detok.feed(piece)
            assert expected.startswith(shown), (text, stops, shown)
        shown += detok.finish()
        assert shown == expected, (text, stops, cuts)
        assert detok.text == expected
        assert detok.stopped == (expected != text)


def test_random_splits_single_stop_matches_str_split() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choices("xy<|>中", k=rng.randint(0, 40)))
        stop = "<|>"
        data = text.encode()
        cuts = rng.sample(range(1, len(data)), k=rng.randint(0, max(0, len(data) - 1)))
        outputs, tail = run(split_at(data, cuts), [stop])
        assert "".join(outputs) + tail == text.split(stop)[0]
