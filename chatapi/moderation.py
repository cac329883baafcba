"""Content policy: categories of terms checked on prompts and on generated text.

A policy is TOML (`--moderation-policy PATH`, or `default` for the built-in one below):

    [categories.violence]                 # OpenAI's category names
    terms = ["kill you", "杀了你"]         # whole words or phrases
    patterns = ["behead*", "*cide"]       # `*` at an end: the word may go on on that side
    input = "block"                       # prompts: block (400) | log | allow
    output = "block"                      # generated text: block (content_filter) | log | allow

Text and terms are folded alike before matching: compatibility forms (full-width letters,
ligatures) decomposed, case folded, accents and zero-width characters removed, every run of
non-word characters made one space, and each character of a script written without spaces
(Chinese, Japanese, Thai, ...) made a word of its own. One Aho-Corasick automaton over all terms
then finds every category in a single pass: time linear in the text, whatever the text.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import tomllib
import unicodedata
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from chatapi.api.errors import APIError

log = logging.getLogger("chatapi.moderation")

CATEGORIES: tuple[str, ...] = (
    "hate", "hate/threatening", "harassment", "harassment/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
    "sexual/minors", "violence", "violence/graphic")
ACTIONS = ("block", "log", "allow")
MAX_PATTERN_CHARS = 200
MAX_PATTERNS = 100_000

# --- folding ---------------------------------------------------------------------------------

# Scripts written without spaces between words: each of their characters is a word.
# (Thai, Lao, Myanmar, Khmer, kana, bopomofo, CJK ideographs): starts and ends, sorted
_UNSPACED = (0x0E00, 0x0F00, 0x1000, 0x10A0, 0x1780, 0x1800, 0x3040, 0x3130, 0x3400, 0x4DC0,
             0x4E00, 0xA000, 0xF900, 0xFB00, 0x20000, 0x40000)
_MEMO_LIMIT = 1 << 17  # entries per memo table: bounded memory whatever the input


@cache
def _strip_table() -> frozenset[str]:
    """Combining marks and invisible format characters (zero-width space, soft hyphen...)."""
    planes = (range(0x20000), range(0xE0000, 0xE1000))  # no marks elsewhere
    return frozenset(chr(cp) for plane in planes for cp in plane
                     if unicodedata.category(chr(cp)) in ("Mn", "Mc", "Me", "Cf"))


def _piece(char: str) -> str:
    """What one character of decomposed, case-folded text becomes in folded text."""
    if char.isascii():
        return char if char.isalnum() else " "
    if char in _strip_table():
        return ""
    if bisect_right(_UNSPACED, ord(char)) & 1:
        return f" {char} "
    return char if char.isalnum() else " "


def _decomposed(text: str) -> str:
    """Compatibility decomposition (full-width and other forms), then case folding."""
    return unicodedata.normalize("NFKD", text).casefold()


def fold(text: str) -> str:
    """The form text is matched in (see the module docstring)."""
    out: list[str] = []
    space = False
    for char in _decomposed(text):
        for folded in _piece(char):
            if folded == " " and space:
                continue
            space = folded == " "
            out.append(folded)
    return "".join(out)


def fold_pattern(pattern: str, *, wildcards: bool) -> str:
    """A term or pattern in folded form, with a space where a word boundary is required."""
    head = tail = " "
    if wildcards and pattern.startswith("*"):
        head, pattern = "", pattern[1:]
    if wildcards and pattern.endswith("*"):
        tail, pattern = "", pattern[:-1]
    core = fold(pattern).strip(" ")
    if not core:
        raise PolicyError(f"pattern {pattern!r} has no letters or digits")
    return head + core + tail


# --- Aho-Corasick ----------------------------------------------------------------------------


class Automaton:
    """Finds which of many folded patterns occur in text, in one pass over it.

    `step` advances over one folded character. `scan` reads decomposed text directly: its
    transitions on a raw character (folding, space runs and all) are memoized per state, so
    the inner loop is one dictionary lookup per character.
    """

    def __init__(self, patterns: Iterable[tuple[str, int]]) -> None:
        """`patterns`: (folded pattern, category bit mask) pairs."""
        goto: list[dict[str, int]] = [{}]
        self.depth = [0]
        self.spaced = [False]  # the state's text ends with a space: skip another one
        own = [0]  # categories of the patterns that end exactly at a state
        for text, mask in patterns:
            state = 0
            for char in text:
                nxt = goto[state].get(char)
                if nxt is None:
                    nxt = goto[state][char] = len(goto)
                    goto.append({})
                    self.depth.append(self.depth[state] + 1)
                    self.spaced.append(char == " ")
                    own.append(0)
                state = nxt
            own[state] |= mask
        self.own = own
        self.alphabet = frozenset(c for edges in goto for c in edges)
        self.fail = [0] * len(goto)
        self.link = [0] * len(goto)  # nearest proper suffix state where a pattern ends
        self.hits = list(own)  # categories of every pattern ending at a state
        queue = deque(goto[0].values())
        while queue:
            state = queue.popleft()
            for char, child in goto[state].items():
                back = self.fail[state]
                while back and char not in goto[back]:
                    back = self.fail[back]
                target = goto[back].get(char, 0)
                self.fail[child] = target if target != child else 0
                self.link[child] = self.fail[child] if own[self.fail[child]] \
                    else self.link[self.fail[child]]
                self.hits[child] |= self.hits[self.fail[child]]
                queue.append(child)
        self._goto = goto
        self._delta = [dict(edges) for edges in goto]  # goto completed lazily from `fail`
        self._raw: list[dict[str, int]] = [{} for _ in goto]  # see scan()
        self._scan_hits = list(self.hits)  # raw states: real ones, then aliases
        self._real: list[int] = list(range(len(goto)))
        self._aliases: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()
        self.start = self.step(0, " ")  # the start of a text is a word boundary
        self.max_depth = max(self.depth)

    def step(self, state: int, char: str) -> int:
        """The state after one folded character."""
        nxt = self._delta[state].get(char)
        if nxt is not None:
            return nxt
        if char not in self.alphabet:
            return 0
        back = state
        while back and char not in self._goto[back]:
            back = self.fail[back]
        nxt = self._goto[back].get(char, 0)
        if len(self._delta[state]) < _MEMO_LIMIT:
            self._delta[state][char] = nxt
        return nxt

    def scan(self, decomposed: str) -> int:
        """Categories (bit mask) of every pattern in text given as `_decomposed(text)`, with
        word boundaries at both ends."""
        raw, hits, raw_step = self._raw, self._scan_hits, self._raw_step
        state, found = self.start, self.hits[self.start]
        for char in decomposed:
            nxt = raw[state].get(char)
            state = raw_step(state, char) if nxt is None else nxt
            if hits[state]:
                found |= hits[state]
        return found | self._scan_hits[self._raw_step(state, " ")]

    def _raw_step(self, state: int, char: str) -> int:
        """Memoized transition on one decomposed character. A character that folds to several
        (" 字 ") may pass a pattern's end on the way: the result is then an alias state, the
        same state with those categories added to its hits."""
        real, seen = self._real[state], 0
        for folded in _piece(char):
            if folded == " " and self.spaced[real]:
                continue
            real = self.step(real, folded)
            seen |= self.hits[real]
        nxt = real
        if seen != self.hits[real]:
            with self._lock:  # scans may run in worker threads: ids must match the lists
                nxt = self._aliases.get((real, seen), -1)
                if nxt < 0:
                    nxt = self._aliases[real, seen] = len(self._real)
                    self._real.append(real)
                    self._scan_hits.append(seen)
                    self._raw.append(self._raw[real])
        if len(self._raw[state]) < _MEMO_LIMIT:
            self._raw[state][char] = nxt
        return nxt

    def longest_hit(self, state: int, mask: int) -> int:
        """Length of the longest pattern with a category in `mask` that ends at `state`."""
        while state:
            if self.own[state] & mask:
                return self.depth[state]
            state = self.link[state]
        return 0


# --- policy ----------------------------------------------------------------------------------


class PolicyError(ValueError):
    """A policy file that cannot be used, with what is wrong in it."""


@dataclass(frozen=True)
class Rule:
    category: str
    input: str = "block"
    output: str = "block"
    terms: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    """Which categories a text matched, and which of those the action says to block."""

    found: tuple[str, ...]
    blocked: tuple[str, ...]

    @property
    def flagged(self) -> bool:
        return bool(self.found)


class Policy:
    def __init__(self, rules: Iterable[Rule], name: str = "custom") -> None:
        self.name = name
        self.rules = {rule.category: rule for rule in rules}
        bits = {category: 1 << i for i, category in enumerate(CATEGORIES)}
        folded = []
        for rule in self.rules.values():
            folded += [(fold_pattern(t, wildcards=False), bits[rule.category])
                       for t in rule.terms]
            folded += [(fold_pattern(p, wildcards=True), bits[rule.category])
                       for p in rule.patterns]
        self.automaton = Automaton(folded)
        self.block_input = self._mask(bits, "input", "block")
        self.block_output = self._mask(bits, "output", "block")
        self.watch_output = self.block_output | self._mask(bits, "output", "log")

    def _mask(self, bits: dict[str, int], side: str, action: str) -> int:
        return sum(bits[c] for c, rule in self.rules.items() if getattr(rule, side) == action)

    @classmethod
    def from_toml(cls, text: str, name: str = "custom") -> Policy:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"not valid TOML: {exc}") from None
        unknown = set(data) - {"categories"}
        if unknown:
            raise PolicyError(f"unknown top-level keys: {sorted(unknown)}")
        categories = data.get("categories", {})
        if not isinstance(categories, dict):
            raise PolicyError("[categories] must be a table")
        rules = [_rule(category, body) for category, body in categories.items()]
        total = sum(len(r.terms) + len(r.patterns) for r in rules)
        if total > MAX_PATTERNS:
            raise PolicyError(f"at most {MAX_PATTERNS} terms and patterns, got {total}")
        return cls(rules, name)

    @classmethod
    def load(cls, source: str) -> Policy:
        """`default` (the built-in policy) or the path of a TOML policy file."""
        if source == "default":
            return cls.from_toml(DEFAULT_POLICY, "chatapi-default-policy")
        path = Path(source).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return cls.from_toml(text, path.stem)
        except PolicyError as exc:
            raise PolicyError(f"{path}: {exc}") from None

    def classify(self, text: str) -> list[str]:
        """The categories whose terms occur in text (whatever their actions)."""
        return self._names(self.automaton.scan(_decomposed(text)))

    def check_input(self, texts: Iterable[str]) -> Verdict:
        """The categories found in any of texts (each checked on its own)."""
        found = 0
        for text in texts:
            if text:
                found |= self.automaton.scan(_decomposed(text))
        return Verdict(tuple(self._names(found)), tuple(self._names(found & self.block_input)))

    def _names(self, mask: int) -> list[str]:
        return [c for i, c in enumerate(CATEGORIES) if mask >> i & 1]

    def stream_filter(self) -> StreamFilter:
        return StreamFilter(self.automaton, self.block_output, self.watch_output)


def _rule(category: str, body: Any) -> Rule:
    if category not in CATEGORIES:
        raise PolicyError(f"unknown category {category!r}; use OpenAI's names: "
                          + ", ".join(CATEGORIES))
    if not isinstance(body, dict):
        raise PolicyError(f"[categories.{category!r}] must be a table")
    unknown = set(body) - {"terms", "patterns", "input", "output"}
    if unknown:
        raise PolicyError(f"[categories.{category!r}]: unknown keys {sorted(unknown)}")
    lists = {}
    for key in ("terms", "patterns"):
        items = body.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise PolicyError(f"[categories.{category!r}].{key} must be a list of strings")
        long = [i for i in items if len(i) > MAX_PATTERN_CHARS]
        if long:
            raise PolicyError(f"[categories.{category!r}].{key}: at most {MAX_PATTERN_CHARS} "
                              f"characters each, got {len(long[0])}")
        lists[key] = tuple(items)
    actions = {}
    for side in ("input", "output"):
        action = body.get(side, "block")
        if action not in ACTIONS:
            raise PolicyError(f"[categories.{category!r}].{side} must be one of {ACTIONS}, "
                              f"got {action!r}")
        actions[side] = action
    try:
        for term in lists["terms"]:
            fold_pattern(term, wildcards=False)
        for pattern in lists["patterns"]:
            fold_pattern(pattern, wildcards=True)
    except PolicyError as exc:
        raise PolicyError(f"[categories.{category!r}]: {exc}") from None
    return Rule(category, terms=lists["terms"], patterns=lists["patterns"], **actions)


# --- prompts -------------------------------------------------------------------------------


async def check_prompt(policy: Policy | None, texts: list[str], param: str) -> None:
    """400 content_filter (Azure OpenAI's shape) when texts match a category that blocks
    input; categories set to `log` are logged. Long texts are checked off the event loop."""
    if policy is None:
        return
    if sum(len(t) for t in texts) > 65536:
        verdict = await asyncio.to_thread(policy.check_input, texts)
    else:
        verdict = policy.check_input(texts)
    if verdict.found and not verdict.blocked:
        log.info("content policy: prompt matched %s (logged)", ", ".join(verdict.found))
    if verdict.blocked:
        raise prompt_filtered(policy, verdict, param)


def prompt_filtered(policy: Policy, verdict: Verdict, param: str) -> APIError:
    result = {c: {"filtered": c in verdict.blocked, "detected": c in verdict.found}
              for c in policy.rules}
    return APIError(
        400, "The prompt was filtered by this server's content policy (categories: "
        f"{', '.join(verdict.blocked)}). Please modify your prompt and retry.",
        param=param, code="content_filter",
        inner={"code": "ResponsibleAIPolicyViolation", "content_filter_result": result})


# --- generated text --------------------------------------------------------------------------


@dataclass
class StreamFilter:
    """Checks generated text as it comes; releases only text no pattern can still reach back
    into, so a blocked term is never released, even in part."""

    automaton: Automaton
    block: int
    watch: int
    tripped: bool = False
    found: int = 0  # categories seen (blocked or logged)
    _state: int = 0
    _pending: str = ""  # text received and not yet released
    _released: int = 0  # characters released so far
    _starts: deque[int] = field(default_factory=deque)  # source offset of each folded char

    def __post_init__(self) -> None:
        self._starts = deque(maxlen=self.automaton.max_depth + 1)
        self._push(" ", 0)  # the start of the text is a word boundary

    def feed(self, text: str) -> str:
        """Add generated text; return the part that is now safe to send (may be "")."""
        if self.tripped or not text:
            return ""
        base = self._released + len(self._pending)
        self._pending += text
        for k, char in enumerate(text):
            letters = False  # a space after this character's letters lies after it
            for folded in "".join(_piece(d) for d in _decomposed(char)):
                at = base + k + (folded == " " and letters)
                letters = letters or folded != " "
                if self._push(folded, at):
                    return self._release_until(self._match_start())
        depth = self.automaton.depth[self._state]
        keep_from = self._starts[-depth] if depth else base + len(text)
        return self._release_until(keep_from)

    def finish(self) -> str:
        """End of the text: the rest, unless it completes a blocked term."""
        if self.tripped:
            return ""
        end = self._released + len(self._pending)
        if self._push(" ", end):
            return self._release_until(self._match_start())
        return self._release_until(end)

    def _push(self, char: str, offset: int) -> bool:
        """Advance over one folded character; True when a blocked term has just ended."""
        if char == " " and self.automaton.spaced[self._state]:
            return False
        self._state = self.automaton.step(self._state, char)
        self._starts.append(offset)
        hits = self.automaton.hits[self._state] & self.watch
        if not hits:
            return False
        self.found |= hits
        if hits & self.block:
            self.tripped = True
        return self.tripped

    def _match_start(self) -> int:
        length = self.automaton.longest_hit(self._state, self.block)
        return self._starts[-length]

    def _release_until(self, offset: int) -> str:
        count = max(0, offset - self._released)
        out, self._pending = self._pending[:count], self._pending[count:]
        self._released += count
        if self.tripped:
            self._pending = ""
        return out


class OutputGuard:
    """The output filters of one request's choices, applied to engine outputs in place.

    A choice whose text trips the filter ends with finish_reason "content_filter"; its held-back
    text and the logprobs of tokens beyond what was sent are dropped.
    """

    def __init__(self, policy: Policy, n: int, token_bytes: Callable[[int], bytes]) -> None:
        self.filters = [policy.stream_filter() for _ in range(n)]
        self.token_bytes = token_bytes
        self._held: list[list[Any]] = [[] for _ in range(n)]  # logprobs of held-back text
        self._token_end = [0] * n  # UTF-8 bytes of all tokens with held logprobs
        self._sent = [0] * n  # UTF-8 bytes of text released

    def apply(self, out: Any, index: int | None = None) -> bool:
        """Filter one SeqOutput (text, finish_reason, logprobs) of choice `index` (default:
        out.index); True if it tripped."""
        i = out.index if index is None else index
        filt = self.filters[i]
        text = filt.feed(out.text)
        if out.finish_reason and not filt.tripped:
            text += filt.finish()
            if filt.found:
                log.info("content policy: output matched %s (logged)", ", ".join(
                    c for b, c in enumerate(CATEGORIES) if filt.found >> b & 1))
        out.text = text
        self._sent[i] += len(text.encode())
        if out.logprobs is not None:
            out.logprobs = self._logprobs(i, out.logprobs, final=bool(out.finish_reason))
        if filt.tripped:
            out.finish_reason = "content_filter"
            self._held[i] = []  # tokens of text that is never sent
        return filt.tripped

    def _logprobs(self, i: int, new: list[Any], final: bool) -> list[Any]:
        held = self._held[i]
        for item in new:
            self._token_end[i] += len(self.token_bytes(item.token))
            held.append((self._token_end[i], item))
        if final and not self.filters[i].tripped:
            ready, self._held[i] = held, []
        else:
            ready = [h for h in held if h[0] <= self._sent[i]]
            self._held[i] = held[len(ready):]
        return [item for _, item in ready]


def output_guard(policy: Policy | None, n: int, token_bytes: Callable[[int], bytes]
                 ) -> OutputGuard | None:
    """A guard for n choices, or None when the policy does not look at output."""
    if policy is None or not policy.watch_output:
        return None
    return OutputGuard(policy, n, token_bytes)


DEFAULT_POLICY = """\
# chatapi's built-in policy (`--moderation-policy default`): a short starting list of
# unambiguous phrases. Write your own file for real use; this one only shows the shape.

[categories."harassment/threatening"]
terms = ["i will kill you", "i am going to kill you", "i'm going to kill you",
         "you deserve to die", "i will hurt you", "我要杀了你", "杀了你"]

[categories.harassment]
terms = ["kill yourself", "go kill yourself", "nobody would miss you", "kys", "去死吧"]

[categories."self-harm/intent"]
terms = ["i want to kill myself", "i want to end my life", "i am going to kill myself",
         "i'm going to kill myself", "我想自杀"]

[categories."self-harm/instructions"]
terms = ["how to kill myself", "painless way to die", "best way to commit suicide",
         "how to commit suicide", "怎么自杀"]

[categories."self-harm"]
terms = ["commit suicide", "slit my wrists", "自残", "自杀"]
input = "log"

[categories."sexual/minors"]
terms = ["child porn", "child pornography", "underage porn", "儿童色情"]

[categories.sexual]
terms = ["porn video", "explicit sex scene", "色情"]
input = "log"

[categories."violence/graphic"]
terms = ["gouged out his eyes", "disembowel", "skinned alive"]
input = "log"

[categories."illicit/violent"]
terms = ["how to make a pipe bomb", "how to build a bomb", "make a pipe bomb", "制造炸弹"]

[categories.illicit]
terms = ["how to make meth", "how to cook meth", "buy stolen credit cards"]

[categories."hate/threatening"]
terms = ["should all be killed", "should be exterminated", "ethnic cleansing now"]
"""

