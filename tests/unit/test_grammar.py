"""JSON schema -> GBNF: what the grammars accept and refuse, checked with llama.cpp's own grammar
engine over the default model's vocabulary, and the errors for schemas they cannot enforce."""

from __future__ import annotations

import ctypes
import json
import math
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chatapi.engine.gbnf_ranges import int_range
from chatapi.engine.grammar import (
    SchemaError,
    _schema_grammar,
    json_object_grammar,
    schema_grammar,
)

# --- integer ranges, checked without llama.cpp --------------------------------------------------


def _as_regex(alternatives: list[str]) -> re.Pattern[str]:
    text = "|".join(alternatives).replace(" ", "")
    return re.compile("(?:" + re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), text) + ")")


@pytest.mark.parametrize(("low", "high"), [
    (0, 0), (0, 9), (1, 10), (0, 150), (7, 93), (10, 99), (100, 999), (19, 2001),
    (-5, 5), (-150, -7), (-1000, 0), (123, 4567), (999, 1000), (0, 10 ** 6),
])
def test_integer_range_matches_exactly_its_integers(low: int, high: int) -> None:
    pattern = _as_regex(int_range(low, high))
    window = range(min(low, 0) - 30, max(high, 0) + 30)
    samples = set(window) | {low, high, low - 1, high + 1} | set(range(low, high + 1, 997))
    for n in samples:
        assert bool(pattern.fullmatch(str(n))) == (low <= n <= high), n
    assert not pattern.fullmatch("007") and not pattern.fullmatch("-0")


# --- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("schema", "feature"), [
    ({"type": "string", "pattern": "^a+$"}, "pattern"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"a": {"not": {"type": "null"}}}}, "not"),
    ({"type": "number", "maximum": 3.5}, "maximum"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
    ({"type": "integer", "multipleOf": 3}, "multipleOf"),
    ({"$ref": "https://example.com/schema.json"}, "$ref"),
    ({"$ref": "#/$defs/missing"}, "$ref"),
    ({"type": "string", "maxLength": 100_000}, "maxLength"),
    ({"allOf": [{"type": "object"}, {"required": ["a"]}]}, "allOf"),
    ({"type": "tuple"}, "type"),
    (False, "false"),
])
def test_unsupported_feature_is_named(schema: Any, feature: str) -> None:
    with pytest.raises(SchemaError) as info:
        schema_grammar(schema)
    assert feature in str(info.value)


def test_error_says_where() -> None:
    schema = {"type": "object", "properties": {"zip": {"type": "string", "pattern": "[0-9]+"}}}
    with pytest.raises(SchemaError, match=r"\$\.properties\.zip"):
        schema_grammar(schema)


def test_too_deep_schema_is_refused() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        schema = {"type": "array", "items": schema}
    with pytest.raises(SchemaError, match="nested"):
        schema_grammar(schema)


def test_grammars_are_cached_and_fast() -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "integer", "minimum": i}
                                               for i in range(50)}, "required": ["p0"]}
    started = time.perf_counter()
    first = schema_grammar(schema)
    assert time.perf_counter() - started < 0.5
    hits = _schema_grammar.cache_info().hits
    assert schema_grammar(json.loads(json.dumps(schema))) == first
    assert _schema_grammar.cache_info().hits == hits + 1


# --- what llama.cpp's grammar engine accepts ----------------------------------------------------

@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    lc = pytest.importorskip("llama_cpp")
    from chatapi.models.default import ensure_default_model

    try:
        path = ensure_default_model(progress=False)
    except Exception as exc:  # noqa: BLE001 - no model here: these checks need its vocabulary
        pytest.skip(f"default model unavailable: {exc}")
    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    params.vocab_only = True
    model = lc.llama_model_load_from_file(str(path).encode(), params)
    assert model
    yield lc.llama_model_get_vocab(model)
    lc.llama_model_free(model)


class Matcher:
    """Feeds text through a llama.cpp grammar sampler token by token, never accepting a token
    the grammar forbids (that would abort the process)."""

    def __init__(self, vocab: Any, grammar: str) -> None:
        import llama_cpp as lc

        self.lc = lc
        self.vocab = vocab
        self.sampler = lc.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        assert self.sampler, f"llama.cpp refused the grammar:\n{grammar}"

    def _allowed(self, token: int) -> bool:
        lc = self.lc
        data = (lc.llama_token_data * 1)()
        data[0].id, data[0].logit, data[0].p = token, 0.0, 0.0
        arr = lc.llama_token_data_array(data, 1, -1, False)
        lc.llama_sampler_apply(self.sampler, ctypes.byref(arr))
        return not math.isinf(data[0].logit)

    def accepts(self, text: str) -> bool:
        lc = self.lc
        raw = text.encode()
        buf = (lc.llama_token * (len(raw) + 8))()
        n = lc.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, True)
        for token in buf[:n]:
            if not self._allowed(token):
                return False
            lc.llama_sampler_accept(self.sampler, token)
        return self._allowed(lc.llama_vocab_eos(self.vocab))

    def close(self) -> None:
        self.lc.llama_sampler_free(self.sampler)


def accepts(vocab: Any, grammar: str, text: str) -> bool:
    matcher = Matcher(vocab, grammar)
    try:
        return matcher.accepts(text)
    finally:
        matcher.close()


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        "born": {"type": "string", "format": "date"},
        "ratio": {"type": "number"},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.model
@pytest.mark.parametrize("text", [
    '{"name": "Ann", "age": 31}',
    '{"name":"Ann","age":0,"ok":true}',
    '{\n  "name": "Zoë",\n  "age": 150,\n  "email": null,\n  "tags": ["a", "b"]\n}',
    '{"name": "B", "age": 7, "born": "2020-02-29", "ratio": -1.5e3}',
    '{"name": "\\"q\\"", "age": 12, "email": "a@b.c", "ok": false}',
])
def test_schema_grammar_accepts_valid_documents(vocab: Any, text: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(text), PERSON)
    assert accepts(vocab, schema_grammar(PERSON), text)


@pytest.mark.model
@pytest.mark.parametrize("text", [
    '{"age": 31}',  # missing required
    '{"name": "Ann", "age": 151}',  # above maximum
    '{"name": "Ann", "age": -1}',
    '{"name": "", "age": 3}',  # below minLength
    '{"name": "Ann Ann Ann Ann", "age": 3}',  # above maxLength
    '{"name": "Ann", "age": 3, "x": 1}',  # additional property
    '{"name": "Ann", "age": 3, "tags": ["c"]}',  # not in enum
    '{"name": "Ann", "age": 3, "tags": ["a", "a", "b"]}',  # above maxItems
    '{"name": "Ann", "age": 3, "born": "2020-13-01"}',
    '{"name": "Ann", "age": 3.5}',
    '{"name": "Ann", "age": 3',  # unfinished: the end of text is not allowed yet
    '["Ann", 3]',
])
def test_schema_grammar_refuses_invalid_documents(vocab: Any, text: str) -> None:
    assert not accepts(vocab, schema_grammar(PERSON), text)


@pytest.mark.model
def test_json_object_grammar(vocab: Any) -> None:
    grammar = json_object_grammar()
    assert accepts(vocab, grammar, '{"a": [1, 2.5, {"b": null}], "c": "\\u00e9"}')
    assert accepts(vocab, grammar, "{}")
    assert not accepts(vocab, grammar, "[1]")
    assert not accepts(vocab, grammar, '{"a": 1,}')
    assert not accepts(vocab, grammar, "{'a': 1}")


TREE = {
    "$defs": {"node": {"type": "object", "properties": {
        "value": {"type": "integer"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["value"]}},
    "$ref": "#/$defs/node",
}


@pytest.mark.model
def test_recursive_refs(vocab: Any) -> None:
    grammar = schema_grammar(TREE)
    assert accepts(vocab, grammar, '{"value": 1, "children": [{"value": 2, "children": []}]}')
    assert not accepts(vocab, grammar, '{"value": 1, "children": [{"children": []}]}')


@pytest.mark.model
def test_any_of_and_const(vocab: Any) -> None:
    schema = {"anyOf": [{"type": "object", "properties": {"kind": {"const": "circle"},
                                                          "r": {"type": "number"}},
                         "required": ["kind", "r"]},
                        {"type": "integer", "exclusiveMinimum": 10}]}
    grammar = schema_grammar(schema)
    assert accepts(vocab, grammar, '{"kind": "circle", "r": 2}')
    assert accepts(vocab, grammar, "11")
    assert not accepts(vocab, grammar, "10")
    assert not accepts(vocab, grammar, '{"kind": "square", "r": 2}')
