"""The content policy: folding, matching, policy files, the streaming filter and its speed."""

from __future__ import annotations

import random
import time
from functools import cache

import pytest

from chatapi.engine.sampling import TokenLogprob
from chatapi.engine.sequence import SeqOutput
from chatapi.moderation import (
    CATEGORIES,
    OutputGuard,
    Policy,
    PolicyError,
    fold,
)

POLICY = """
[categories.violence]
terms = ["kill you", "杀了你"]
patterns = ["behead*", "*slaughter"]

[categories.harassment]
terms = ["idiot"]
input = "log"

[categories."self-harm"]
terms = ["自杀"]
output = "allow"
"""


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.from_toml(POLICY)


def test_fold_makes_forms_alike() -> None:
    assert fold("ＫＩＬＬ　Ｙｏｕ") == "kill you"  # full-width letters and space
    assert fold("Straße ﬁne") == "strasse fine"  # case folding, ligatures
    assert fold("naïve café") == "naive cafe"  # accents
    assert fold("ki\u200bll--you!!") == "kill you "  # zero-width space, punctuation runs
    assert fold("我要kill你") == " 我 要 kill 你 "  # each Chinese character is a word


@pytest.mark.parametrize(("text", "expected"), [
    ("I will KILL YOU.", ["violence"]),
    ("Ｉ ｗｉｌｌ ｋｉｌｌ ｙｏｕ", ["violence"]),
    ("kill\n\tyou", ["violence"]),
    ("kill-you", ["violence"]),
    ("skill your", []),  # whole words only
    ("overkill you", []),
    ("killyou", []),
    ("他说杀了你", ["violence"]),  # Chinese: no spaces needed
    ("我要kill you了", ["violence"]),  # a Latin term inside Chinese text
    ("beheading", ["violence"]),  # behead* : the word may go on
    ("mass slaughter", ["violence"]),
    ("manslaughter", ["violence"]),  # *slaughter : the word may start earlier
    ("slaughterhouse", []),
    ("you idiot", ["harassment"]),
    ("idiotic", []),
    ("我不想自杀", ["self-harm"]),
    ("", []),
])
def test_classify(policy: Policy, text: str, expected: list[str]) -> None:
    assert policy.classify(text) == expected


def test_check_input_blocks_only_blocking_categories(policy: Policy) -> None:
    verdict = policy.check_input(["hello", "you idiot"])
    assert verdict.flagged and verdict.found == ("harassment",) and verdict.blocked == ()
    verdict = policy.check_input(["kill", "you"])  # each text on its own
    assert not verdict.flagged
    verdict = policy.check_input(["I will kill you, idiot"])
    assert verdict.blocked == ("violence",)
    assert set(verdict.found) == {"violence", "harassment"}


@pytest.mark.parametrize(("text", "problem"), [
    ("[categories.violent]\nterms = ['x']", "unknown category"),
    ("[categories.violence]\nterms = 'x'", "list of strings"),
    ("[categories.violence]\nterm = ['x']", "unknown keys"),
    ("[categories.violence]\nterms = ['x']\ninput = 'deny'", "must be one of"),
    ("[categories.violence]\nterms = ['!!']", "no letters or digits"),
    ("[categories.violence]\nterms = ['" + "x" * 201 + "']", "at most 200"),
    ("[violence]\nterms = ['x']", "unknown top-level"),
    ("[categories.violence\n", "not valid TOML"),
])
def test_bad_policies_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(PolicyError, match=problem):
        Policy.from_toml(text)


def test_load_default_and_file(tmp_path) -> None:
    default = Policy.load("default")
    assert set(default.rules) <= set(CATEGORIES) and len(default.rules) >= 8
    assert default.classify("I want to kill myself") == ["self-harm/intent"]
    path = tmp_path / "strict.toml"
    path.write_text(POLICY, encoding="utf-8")
    assert Policy.load(str(path)).name == "strict"
    with pytest.raises(PolicyError, match="cannot read"):
        Policy.load(str(tmp_path / "missing.toml"))


def chunks(text: str, rng: random.Random) -> list[str]:
    out, i = [], 0
    while i < len(text):
        size = rng.randint(1, 4)
        out.append(text[i:i + size])
        i += size
    return out


def stream(policy: Policy, pieces: list[str]) -> tuple[str, bool]:
    filt = policy.stream_filter()
    sent = "".join(filt.feed(p) for p in pieces)
    return sent + filt.finish(), filt.tripped


def test_stream_filter_never_sends_a_blocked_term(policy: Policy) -> None:
    rng = random.Random(7)
    text = "Fine. Now I will KILL YOU, said the knight. More text follows."
    for _ in range(200):
        sent, tripped = stream(policy, chunks(text, rng))
        assert tripped and sent == "Fine. Now I will"
    sent, tripped = stream(policy, chunks("我说：杀了你！然后", rng))
    assert tripped and sent == "我说"


def test_stream_filter_passes_clean_text_unchanged(policy: Policy) -> None:
    rng = random.Random(3)
    text = "A skilled killer? No: kill yourself-help books, 自己, ＦＵＬＬ width. killyou"
    for _ in range(200):
        sent, tripped = stream(policy, chunks(text, rng))
        assert not tripped and sent == text


def test_stream_filter_holds_back_only_what_could_still_match(policy: Policy) -> None:
    filt = policy.stream_filter()
    assert filt.feed("I will ki") == "I will"
    assert filt.feed("nd") == " kind"  # no term starts within "kind"
    assert filt.feed(" words kill") == " words"
    assert filt.feed(" yourself") == " kill yourself"
    assert filt.feed(" kill") == ""
    assert filt.finish() == " kill"  # the end of the text is a word boundary, and "kill" alone
    assert not filt.tripped


def test_stream_filter_agrees_with_classify() -> None:
    policy = Policy.from_toml("""
[categories.violence]
terms = ["ab", "b a b"]
patterns = ["*ba", "aab*"]
""")
    rng = random.Random(11)
    for _ in range(2000):
        text = "".join(rng.choice("ab -Ａ.") for _ in range(rng.randint(0, 12)))
        _, tripped = stream(policy, chunks(text, rng))
        assert tripped == bool(policy.classify(text)), text


def test_output_guard_ends_the_choice_and_drops_held_logprobs(policy: Policy) -> None:
    pieces = ["I", " will", " kill", " you", " now"]
    token_bytes = {i: p.encode() for i, p in enumerate(pieces)}
    guard = OutputGuard(policy, 1, token_bytes.__getitem__)
    sent, logprobs, finish = [], [], None
    for token, piece in enumerate(pieces):
        out = SeqOutput(0, piece, [token], completion_tokens=token + 1,
                        logprobs=[TokenLogprob(token, -0.5)])
        tripped = guard.apply(out)
        sent.append(out.text)
        logprobs += [item.token for item in out.logprobs or []]
        if tripped:
            finish = out.finish_reason
            break
    assert finish == "content_filter" and "".join(sent) == "I will"
    assert logprobs == [0, 1]  # the tokens of what was sent, not of "kill", nor of " you"


def test_output_guard_flushes_at_the_end(policy: Policy) -> None:
    guard = OutputGuard(policy, 2, lambda t: b"x")
    first = SeqOutput(1, "I will kill", [1])
    assert not guard.apply(first) and first.text == "I will"
    last = SeqOutput(1, "", [2], finish_reason="stop")
    assert not guard.apply(last) and last.text == " kill" and last.finish_reason == "stop"


@cache
def adversarial_texts() -> dict[str, str]:
    rng = random.Random(1)
    return {
        "near misses": "kill yo" * 150_000,
        "chinese": "杀了" * 175_000,
        "full width": "ｋｉｌｌ　ｙｏｕｒ" * 40_000,
        "combining marks": "k\u0301i\u0301l\u0301" * 112_000,
        "random bmp": "".join(chr(rng.randrange(0x20, 0xD7FF)) for _ in range(340_000)),
        "random astral": "".join(chr(rng.randrange(0x20000, 0x2A6DF)) for _ in range(250_000)),
    }


@pytest.mark.parametrize("name", list(adversarial_texts()))
def test_one_megabyte_is_checked_well_under_a_second(name: str) -> None:
    text = adversarial_texts()[name]
    assert len(text.encode()) >= 1_000_000
    policy = Policy.load("default")  # a fresh policy: nothing memoized yet
    started = time.perf_counter()
    policy.check_input([text])
    elapsed = time.perf_counter() - started
    assert elapsed < 0.8, f"{name}: {elapsed:.2f} s"
