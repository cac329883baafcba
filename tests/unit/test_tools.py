"""Tool-call parsing for each model family: well-formed, truncated, nested and adversarial
output, streamed in pieces or whole, in linear time; prompts and grammars for calls."""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest

from chatapi.chat.tools import (
    CallArguments,
    CallStart,
    Content,
    FunctionSpec,
    ToolCallParser,
    ToolFormat,
    call_grammar,
    detect_format,
    inline_history,
    openai_history,
    parse_tool_calls,
    template_takes_tools,
)
from chatapi.engine.grammar import SchemaError
from tests.unit.test_grammar import accepts
from tests.unit.test_grammar import vocab as vocab  # noqa: F401 - a fixture, used by name

HERMES, LLAMA3, MISTRAL = ToolFormat.HERMES, ToolFormat.LLAMA3, ToolFormat.MISTRAL
NAMES = frozenset({"get_weather", "add"})


def parse(text: str, fmt: ToolFormat = HERMES) -> tuple[str | None, list[tuple[str, str]]]:
    out = parse_tool_calls(text, fmt, NAMES)
    return out.content, [(c.name, c.arguments) for c in out.calls]


def streamed(text: str, fmt: ToolFormat, sizes: list[int]) -> tuple[str, list[tuple[str, str]]]:
    """Feed `text` in pieces of the given sizes (cycled); content and calls from the events."""
    parser = ToolCallParser(fmt, NAMES)
    events, i, k = [], 0, 0
    while i < len(text):
        size = sizes[k % len(sizes)]
        events += parser.feed(text[i:i + size])
        i, k = i + size, k + 1
    events += parser.finish()
    content = "".join(e.text for e in events if isinstance(e, Content))
    calls: dict[int, list[str]] = {}
    for e in events:
        if isinstance(e, CallStart):
            assert e.index == len(calls) and e.id.startswith("call_")
            calls[e.index] = [e.name, ""]
        elif isinstance(e, CallArguments):
            calls[e.index][1] += e.fragment
    return content, [(name, args) for name, args in calls.values()]


# --- hermes (Qwen) ------------------------------------------------------------------------------

WELL_FORMED = [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     None, [("get_weather", '{"city": "Paris"}')]),
    ('Let me check.\n\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
     '</tool_call>', "Let me check.", [("add", '{"a": 1, "b": 2}')]),
    ('<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>\n<tool_call>\n'
     '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', None,
     [("add", '{"a": 1}'), ("get_weather", '{"city": "Oslo"}')]),
    # nested objects, arrays and braces inside strings
    ('<tool_call>\n{"name": "add", "arguments": {"x": {"y": [1, {"z": "}]{"}], "q": "\\"}"}}}'
     '\n</tool_call>', None, [("add", '{"x": {"y": [1, {"z": "}]{"}], "q": "\\"}"}}')]),
    # arguments sent as a JSON string
    ('<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>', None,
     [("add", '{"a": 1}')]),
    # "parameters" instead of "arguments", keys in the other order
    ('<tool_call>{"arguments": {"a": 1}, "name": "add"}</tool_call>', None,
     [("add", '{"a": 1}')]),
    ('<tool_call>{"name": "add", "parameters": {"a": 1}}</tool_call>', None,
     [("add", '{"a": 1}')]),
    # small models forget the tags: a reply that is one bare call
    ('{"name": "get_weather", "arguments": {"city": "Rome"}}', None,
     [("get_weather", '{"city": "Rome"}')]),
    # unicode passes through
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich 東京"}}</tool_call>',
     None, [("get_weather", '{"city": "Zürich 東京"}')]),
]


@pytest.mark.parametrize(("text", "content", "calls"), WELL_FORMED)
def test_hermes_well_formed(text: str, content: str | None, calls: list) -> None:
    assert parse(text) == (content, calls)


@pytest.mark.parametrize(("text", "content", "calls"), WELL_FORMED)
@pytest.mark.parametrize("sizes", [[1], [2, 3], [7], [1, 13, 2]])
def test_streaming_in_any_pieces_matches_whole(text: str, content: str | None, calls: list,
                                               sizes: list[int]) -> None:
    got_content, got_calls = streamed(text, HERMES, sizes)
    assert got_calls == calls
    assert (got_content or None) == content


def test_arguments_stream_as_they_come() -> None:
    parser = ToolCallParser(HERMES, NAMES)
    events = parser.feed('<tool_call>\n{"name": "add", "arguments": {"a": 1')
    assert isinstance(events[0], CallStart) and events[0].name == "add"
    assert [e.fragment for e in events[1:]] == ['{"a": 1']
    assert parser.feed(', "b": 2}}\n</tool_call>') == [CallArguments(0, ', "b": 2}')]
    assert parser.finish() == []


@pytest.mark.parametrize(("text", "content"), [
    ("Hello, world!", "Hello, world!"),
    ("a < b and c <tool_ca", "a < b and c <tool_ca"),  # a marker's start, never finished
    ("<tool_call>not json at all</tool_call>", "<tool_call>not json at all</tool_call>"),
    ("<tool_call>garbage", "<tool_call>garbage"),
    ('<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not an offered function
     '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),
    ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>',
     '<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>'),
    ('{"answer": 42}', '{"answer": 42}'),  # a JSON reply that is not a call
    ('{"name": "add", "arguments": {"a": 1}} and more', '{"name": "add", "arguments": {"a": 1}}'
     " and more"),
    ("__import__('os').system('x')", "__import__('os').system('x')"),
])
def test_what_is_not_a_call_is_content(text: str, content: str) -> None:
    assert parse(text) == (content, [])
    assert streamed(text, HERMES, [3]) == (content, [])


def test_truncated_call_keeps_what_was_written() -> None:
    # cut by max_tokens inside the arguments: the call is there, its arguments partial
    content, calls = parse('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b"')
    assert content is None and calls == [("add", '{"a": 1, "b"')]
    # cut before the name was complete: nothing to call, the text is content
    assert parse('<tool_call>\n{"name": "ad') == ('<tool_call>\n{"name": "ad', [])
    # closed object but no closing tag (the model stopped): still a call
    assert parse('<tool_call>{"name": "add", "arguments": {"a": 1}}') == \
        (None, [("add", '{"a": 1}')])


def test_text_after_a_call_is_content() -> None:
    text = '<tool_call>{"name": "add", "arguments": {}}</tool_call>\nDone.'
    assert parse(text) == ("Done.", [("add", "{}")])


def test_forgotten_closing_tag_before_next_call() -> None:
    text = ('<tool_call>{"name": "add", "arguments": {"a": 1}}\n'
            '<tool_call>{"name": "add", "arguments": {"a": 2}}</tool_call>')
    assert parse(text) == (None, [("add", '{"a": 1}'), ("add", '{"a": 2}')])


@pytest.mark.parametrize("body", [
    '{"name": "add", "arguments": {"a": "' + "x" * 500_000,  # unclosed string
    "[" * 500_000,  # deep nesting
    '{"name": "add", "arguments": ' + "{" * 250_000,
    "<tool_call>" * 45_000,
    " " * 500_000,
])
def test_500_kb_unclosed_call_parses_in_linear_time(body: str) -> None:
    text = "<tool_call>" + body
    started = time.perf_counter()
    parse_tool_calls(text, HERMES, NAMES)
    whole = time.perf_counter() - started
    started = time.perf_counter()
    streamed(text, HERMES, [4096])
    pieces = time.perf_counter() - started
    assert whole < 2.0 and pieces < 2.0, (whole, pieces)


def test_time_grows_linearly() -> None:
    def cost(n: int) -> float:
        text = "<tool_call>" + '{"name": "add", "arguments": {"a": "' + "x" * n
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            streamed(text, HERMES, [5])
            best = min(best, time.perf_counter() - started)
        return best

    small, large = cost(20_000), cost(160_000)
    assert large < small * 8 * 3, (small, large)  # 8x the text: far from 64x


def test_random_noise_never_raises() -> None:
    rng = random.Random(7)
    alphabet = '<>/{}[]":,\\ ntoolcal_name"arguments' + "é"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        for fmt in ToolFormat:
            out = parse_tool_calls(text, fmt, NAMES)
            for call in out.calls:
                assert call.name in NAMES


# --- llama3 and mistral ------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "text", "content", "calls"), [
    (LLAMA3, '{"name": "add", "parameters": {"a": 1, "b": 2}}', None,
     [("add", '{"a": 1, "b": 2}')]),
    (LLAMA3, '  {"name": "add", "parameters": {"a": 1}}; {"name": "add", "parameters": {}}',
     None, [("add", '{"a": 1}'), ("add", "{}")]),
    (LLAMA3, "The answer is {x}.", "The answer is {x}.", []),
    (LLAMA3, '{"name": "add", "parameters": {"a": 1', '{"name": "add", "parameters": {"a": 1',
     []),
    (MISTRAL, '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}, '
              '{"name": "get_weather", "arguments": {"city": "Lyon"}}]', None,
     [("add", '{"a": 1}'), ("get_weather", '{"city": "Lyon"}')]),
    (MISTRAL, '[{"name": "add", "arguments": {"a": 1}}]', None, [("add", '{"a": 1}')]),
    (MISTRAL, 'Sure. [TOOL_CALLS][{"name": "add", "arguments": {}}]', "Sure.", [("add", "{}")]),
    (MISTRAL, "[1, 2, 3]", "[1, 2, 3]", []),
    (MISTRAL, "[TOOL_CALLS][{broken", "[TOOL_CALLS][{broken", []),
])
def test_other_formats(fmt: ToolFormat, text: str, content: str | None, calls: list) -> None:
    assert parse(text, fmt) == (content, calls)
    got_content, got_calls = streamed(text, fmt, [2])
    assert got_calls == calls and (got_content or None) == content


# --- prompts and formats ------------------------------------------------------------------------

def test_format_from_template() -> None:
    assert detect_format("...<tool_call>\\n{...}</tool_call>...") is HERMES
    assert detect_format("{{ '[TOOL_CALLS]' }}") is MISTRAL
    assert detect_format("<|python_tag|>{{ tool }}") is LLAMA3
    assert detect_format("{{ messages }}") is HERMES
    assert template_takes_tools("{% if tools %}x{% endif %}")
    assert not template_takes_tools("{{ messages[0].content }}")


def test_legacy_history_becomes_tool_messages() -> None:
    history = openai_history([
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "", "function_call": {"name": "get_weather",
                                                               "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ])
    call = history[1]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": "{}"}
    assert history[2] == {"role": "tool", "content": "sunny", "name": "get_weather",
                          "tool_call_id": call["id"]}
    assert "function_call" not in history[1]


def test_inline_history_for_templates_without_tools() -> None:
    spec = FunctionSpec("add", "Add", {"type": "object"})
    messages = inline_history([
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "2"},
    ], [spec])
    assert messages[0]["role"] == "system" and '"name": "add"' in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>'
    assert messages[3] == {"role": "user", "content": "<tool_response>\n2\n</tool_response>"}


# --- grammars for enforced calls ----------------------------------------------------------------

def test_call_grammar_shapes() -> None:
    spec = FunctionSpec("get_weather", None, {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"]})
    hermes = call_grammar(HERMES, [spec], parallel=False)
    assert hermes.startswith("root ::= call-block\n")
    assert '"<tool_call>\\n"' in hermes and '"\\n</tool_call>"' in hermes
    assert '"{\\"name\\": \\"get_weather\\", \\"arguments\\": "' in hermes
    assert "( \"\\n\" call-block )*" in call_grammar(HERMES, [spec], parallel=True)
    assert '\\"parameters\\": ' in call_grammar(LLAMA3, [spec], parallel=False)
    assert '"[TOOL_CALLS]"' in call_grammar(MISTRAL, [spec], parallel=True)


def test_call_grammar_refuses_unenforceable_parameters() -> None:
    spec = FunctionSpec("zip", None, {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[0-9]+$"}}})
    with pytest.raises(SchemaError, match="pattern"):
        call_grammar(HERMES, [spec], parallel=False)


@pytest.mark.model
@pytest.mark.parametrize(("fmt", "text", "ok"), [
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
             "</tool_call>", True),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>', False),
    (HERMES, '<tool_call>\n{"name": "add", "arguments": {"city": "Paris"}}\n</tool_call>',
     False),
    (HERMES, "Sure!", False),
    (LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}}', True),
])
def test_call_grammar_matches_what_the_parser_reads(vocab: Any, fmt: ToolFormat, text: str,
                                                    ok: bool) -> None:
    spec = FunctionSpec("get_weather", None, {"type": "object", "properties": {
        "city": {"type": "string"}}, "required": ["city"], "additionalProperties": False})
    grammar = call_grammar(fmt, [spec], parallel=False)
    assert accepts(vocab, grammar, text) is ok
    if ok:
        assert parse_tool_calls(text, fmt, {"get_weather"}).calls[0].name == "get_weather"
        json.loads(parse_tool_calls(text, fmt, {"get_weather"}).calls[0].arguments)
