"""JSON schema -> GBNF grammar (llama.cpp's syntax) for constrained decoding.

`schema_grammar(schema)` compiles a schema into a grammar whose every complete sentence is a JSON
value that validates against the schema. What a grammar cannot enforce (`pattern`, `uniqueItems`,
bounds on non-integer numbers, ...) raises SchemaError naming the keyword and where it is, never
a silent ignore. Compiled grammars are cached by schema text.

`GrammarBuilder` is the lower level used by tool calls: literal text, schema rules and a root.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from chatapi.engine.gbnf_ranges import alt, int_range, repeat

MAX_DEPTH = 32  # schema nesting
MAX_REPEAT = 1000  # minItems/maxItems/minLength/maxLength: llama.cpp expands repetitions
INT_DIGITS = 16  # unbounded integers are written with at most this many digits

# Keywords that say nothing about which values are valid.
ANNOTATIONS = frozenset({
    "title", "description", "examples", "default", "$schema", "$id", "$comment", "$anchor",
    "deprecated", "readOnly", "writeOnly", "$defs", "definitions", "contentMediaType",
    "contentEncoding", "discriminator",
})
# Keywords that constrain values in ways these grammars cannot enforce.
UNSUPPORTED = frozenset({
    "pattern", "patternProperties", "propertyNames", "dependentRequired", "dependentSchemas",
    "dependencies", "if", "then", "else", "not", "uniqueItems", "contains", "minContains",
    "maxContains", "multipleOf", "minProperties", "maxProperties", "unevaluatedProperties",
    "unevaluatedItems", "$dynamicRef", "$recursiveRef",
})
# `format` values compiled to grammars; any other format is an annotation (JSON Schema 2020-12).
FORMATS = ("date", "time", "date-time", "uuid")

_PRIMITIVES: dict[str, str] = {
    "ws": '| " " | "\\n" [ \\t]{0,20}',
    "json-char": '[^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "json-string": '"\\"" json-char* "\\""',
    "json-int": '"-"? ("0" | [1-9] [0-9]{0,15})',
    "json-number": 'json-int ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "json-nonneg-number": '("0" | [1-9] [0-9]{0,15}) ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "json-bool": '"true" | "false"',
    "json-null": '"null"',
    "json-value": "json-object | json-array | json-string | json-number | json-bool | json-null",
    "json-object": '"{" ws ( json-string ws ":" ws json-value '
                   '( ws "," ws json-string ws ":" ws json-value )* ws )? "}"',
    "json-array": '"[" ws ( json-value ( ws "," ws json-value )* ws )? "]"',
    "date": '[0-9]{4} "-" ("0" [1-9] | "1" [0-2]) "-" ("0" [1-9] | [12] [0-9] | "3" [01])',
    "time": '([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9] ":" [0-5] [0-9] ("." [0-9]{1,6})? '
            '("Z" | [+-] ([01] [0-9] | "2" [0-3]) ":" [0-5] [0-9])',
    "date-time": 'date "T" time',
    "uuid": '[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} '
            '"-" [0-9a-fA-F]{12}',
}
_USES = re.compile(r"[a-z][a-z-]*")
_LITERALS = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]')  # GBNF strings and classes


class SchemaError(ValueError):
    """The schema uses something these grammars cannot enforce; the message names it."""

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(f"{message} (at {path})")
        self.path = path


def literal(text: str) -> str:
    """A GBNF string literal matching exactly `text`."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class GrammarBuilder:
    """Collects named rules; `schema()` turns a JSON schema into a rule, `build()` the grammar."""

    def __init__(self) -> None:
        self.rules: dict[str, str] = {}
        self._names_by_body: dict[str, str] = {}
        self._refs: dict[tuple[int, str], str] = {}
        self._root: Any = None

    # --- rules --------------------------------------------------------------------------------

    def primitive(self, name: str) -> str:
        """A shared rule (json-string, ws, date, ...); build() adds the ones it uses."""
        self.rules.setdefault(name, _PRIMITIVES[name])
        return name

    def rule(self, hint: str, body: str) -> str:
        """A rule with this body (one name per distinct body)."""
        if body in self._names_by_body:
            return self._names_by_body[body]
        name = self._fresh(hint)
        self.rules[name] = body
        self._names_by_body[body] = name
        return name

    def _fresh(self, hint: str) -> str:
        base = re.sub(r"[^a-zA-Z0-9]+", "-", hint).strip("-").lower()[:40] or "r"
        if base in _PRIMITIVES or base == "root":
            base += "-x"
        name, i = base, 1
        while name in self.rules:
            i += 1
            name = f"{base}-{i}"
        return name

    def build(self, root: str) -> str:
        pending = [root, *self.rules.values()]
        while pending:  # add the primitives that rules name
            for used in _USES.findall(_LITERALS.sub(" ", pending.pop())):
                if used in _PRIMITIVES and used not in self.rules:
                    pending.append(self.rules.setdefault(used, _PRIMITIVES[used]))
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    # --- schemas ------------------------------------------------------------------------------

    def schema(self, schema: Any, hint: str = "value") -> str:
        """A rule matching the JSON values valid under `schema` (its own root for $ref)."""
        saved, self._root = self._root, schema
        try:
            return self._visit(schema, "$", hint, 0)
        finally:
            self._root = saved

    def _visit(self, schema: Any, path: str, hint: str, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise SchemaError(f"the schema is nested more than {MAX_DEPTH} levels deep", path)
        if schema is True or schema == {}:
            return self.primitive("json-value")
        if schema is False:
            raise SchemaError("the schema 'false' allows no value", path)
        if not isinstance(schema, dict):
            raise SchemaError("a schema must be an object or a boolean", path)
        for key in schema:
            if key in UNSUPPORTED:
                raise SchemaError(f"the JSON schema keyword '{key}' is not supported", path)
        if "$ref" in schema:
            return self._ref(schema, path, depth)
        if "const" in schema:
            return self.rule(hint, self._json_literal(schema["const"]))
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise SchemaError("'enum' must be a non-empty array", path)
            return self.rule(hint, alt(self._json_literal(v) for v in values))
        for key in ("anyOf", "oneOf"):  # oneOf is generated as anyOf: exclusivity is not checked
            if key in schema:
                return self._any_of(schema, key, path, hint, depth)
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise SchemaError("'allOf' with other than one schema is not supported", path)
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            return self._visit(_merge(merged, parts[0]), f"{path}.allOf[0]", hint, depth + 1)
        return self._typed(schema, path, hint, depth)

    def _json_literal(self, value: Any) -> str:
        return literal(json.dumps(value, ensure_ascii=False))

    def _ref(self, schema: dict, path: str, depth: int) -> str:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(f"only local '$ref' (#/...) is supported, got {str(ref)[:80]!r}",
                              path)
        rest = {k: v for k, v in schema.items() if k not in ANNOTATIONS and k != "$ref"}
        if rest:  # keywords beside $ref apply too: inline the target with them
            target = _resolve(self._root, ref, path)
            return self._visit(_merge(rest, target), ref, "ref", depth + 1)
        key = (id(self._root), ref)
        if key not in self._refs:
            target = _resolve(self._root, ref, path)
            name = self._refs[key] = self._fresh(ref.rsplit("/", 1)[-1] or "root-ref")
            self.rules[name] = ""  # reserved: the target may refer to itself
            self.rules[name] = self._visit(target, ref, name + "-body", depth + 1)
        return self._refs[key]

    def _any_of(self, schema: dict, key: str, path: str, hint: str, depth: int) -> str:
        options = schema[key]
        if not isinstance(options, list) or not options:
            raise SchemaError(f"'{key}' must be a non-empty array", path)
        rest = {k: v for k, v in schema.items() if k != key}
        alts = [self._visit(_merge(rest, option), f"{path}.{key}[{i}]", f"{hint}-{i}", depth + 1)
                for i, option in enumerate(options)]
        return self.rule(hint, alt(alts))

    def _typed(self, schema: dict, path: str, hint: str, depth: int) -> str:
        kind = schema.get("type", _infer_type(schema))
        if schema.get("nullable") is True and kind is not None:
            kind = [kind, "null"] if isinstance(kind, str) else [*kind, "null"]
        if isinstance(kind, list):
            if not kind:
                raise SchemaError("'type' must not be an empty array", path)
            alts = [self._typed({**schema, "type": k, "nullable": False}, path, f"{hint}-{k}",
                                depth) for k in kind]
            return self.rule(hint, alt(alts))
        if kind is None:
            return self.primitive("json-value")
        if kind == "object":
            return self._object(schema, path, hint, depth)
        if kind == "array":
            return self._array(schema, path, hint, depth)
        if kind == "string":
            return self._string(schema, path, hint)
        if kind == "integer":
            return self._integer(schema, path, hint)
        if kind == "number":
            return self._number(schema, path)
        if kind == "boolean":
            return self.primitive("json-bool")
        if kind == "null":
            return self.primitive("json-null")
        raise SchemaError(f"unknown type {str(kind)[:40]!r}", path)

    def _object(self, schema: dict, path: str, hint: str, depth: int) -> str:
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        if not isinstance(props, dict):
            raise SchemaError("'properties' must be an object", path)
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError("'required' must be an array of strings", path)
        extra = schema.get("additionalProperties", True)
        props = dict(props)
        for name in required:  # required but not described: any value
            if name not in props:
                if extra is False:
                    raise SchemaError(f"required property {name!r} is not in 'properties' and "
                                      "additionalProperties is false", path)
                props[name] = extra if isinstance(extra, dict) else True
        if not props:
            if extra is False:
                return self.rule(hint, '"{" ws "}"')
            if extra is True or extra == {}:
                return self.primitive("json-object")
            value = self._visit(extra, f"{path}.additionalProperties", f"{hint}-value",
                                depth + 1)
            kv = f'json-string ws ":" ws {value}'
            return self.rule(hint, f'"{{" ws ( {kv} ( ws "," ws {kv} )* ws )? "}}"')
        # Only the declared properties are generated, in their order: always a valid subset.
        names = list(props)
        pairs = []
        for name in names:
            value = self._visit(props[name], f"{path}.properties.{name}", f"{hint}-{name}",
                                depth + 1)
            pairs.append(f'{self._json_literal(name)} ws ":" ws {value}')
        need = [name in required for name in names]
        after = self._after_rules(pairs, need, hint)
        firsts: list[str] = [""] * len(names)
        for i in reversed(range(len(names))):
            body = pairs[i] + (f" {after[i + 1]}" if after[i + 1] else "")
            if not need[i] and i + 1 < len(names):
                body = f"{body} | {firsts[i + 1]}"
            firsts[i] = self.rule(f"{hint}-from-{i}", body)
        inner = f"{firsts[0]} ws" if any(need) else f"( {firsts[0]} ws )?"
        return self.rule(hint, f'"{{" ws {inner} "}}"')

    def _after_rules(self, pairs: list[str], need: list[bool], hint: str) -> list[str]:
        """after[i]: the properties from i on, once one has been written (each after a comma)."""
        after = [""] * (len(pairs) + 1)
        for i in reversed(range(1, len(pairs))):
            item = f'ws "," ws {pairs[i]}'
            item = item if need[i] else f"( {item} )?"
            body = item + (f" {after[i + 1]}" if after[i + 1] else "")
            after[i] = self.rule(f"{hint}-after-{i}", body)
        return after

    def _array(self, schema: dict, path: str, hint: str, depth: int) -> str:
        low, high = _count_bounds(schema, "minItems", "maxItems", path)
        items = schema.get("items", True)
        prefix = schema.get("prefixItems")
        if isinstance(items, list):  # draft-04 tuple form
            prefix, items = items, schema.get("additionalItems", True)
        if prefix is not None:
            if not isinstance(prefix, list) or not prefix:
                raise SchemaError("'prefixItems' must be a non-empty array", path)
            if low > len(prefix) or (high is not None and high < len(prefix)):
                raise SchemaError("minItems/maxItems beside prefixItems are not supported", path)
            parts = [self._visit(s, f"{path}.prefixItems[{i}]", f"{hint}-{i}", depth + 1)
                     for i, s in enumerate(prefix)]
            return self.rule(hint, '"[" ws ' + ' ws "," ws '.join(parts) + ' ws "]"')
        if high == 0 or items is False:
            if low > 0:
                raise SchemaError("'items' false with minItems > 0 allows no value", path)
            return self.rule(hint, '"[" ws "]"')
        item = self._visit(items, f"{path}.items", f"{hint}-item", depth + 1)
        more = f'( ws "," ws {item} )' + repeat(max(low - 1, 0),
                                                 None if high is None else high - 1)
        elements = f"{item} {more}"
        if low == 0:
            return self.rule(hint, f'"[" ws ( {elements} ws )? "]"')
        return self.rule(hint, f'"[" ws {elements} ws "]"')

    def _string(self, schema: dict, path: str, hint: str) -> str:
        fmt = schema.get("format")
        if fmt in FORMATS:
            return self.rule(hint, f'"\\"" {self.primitive(fmt)} "\\""')
        low, high = _count_bounds(schema, "minLength", "maxLength", path)
        if low == 0 and high is None:
            return self.primitive("json-string")
        return self.rule(hint, f'"\\"" {self.primitive("json-char")}{repeat(low, high)} "\\""')

    def _integer(self, schema: dict, path: str, hint: str) -> str:
        low, high = _integer_bounds(schema, path)
        if low is None and high is None:
            return self.primitive("json-int")
        limit = 10 ** INT_DIGITS - 1
        low = -limit if low is None else low
        high = limit if high is None else high
        if low > high:
            raise SchemaError(f"no integer lies between {low} and {high}", path)
        return self.rule(hint, alt(int_range(low, high)))

    def _number(self, schema: dict, path: str) -> str:
        for key in ("maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                raise SchemaError(f"'{key}' on a number (not an integer) is not supported", path)
        if "minimum" in schema:
            if schema["minimum"] != 0:
                raise SchemaError("'minimum' on a number is only supported as 0", path)
            return self.primitive("json-nonneg-number")
        return self.primitive("json-number")


def _merge(base: dict, part: Any) -> Any:
    """`base`'s keywords (other than annotations) applied to one branch of anyOf/allOf."""
    rest = {k: v for k, v in base.items() if k not in ANNOTATIONS}
    if not rest:
        return part
    if not isinstance(part, dict):
        return part if part is not True else rest
    return {**rest, **part}


def _resolve(root: Any, ref: str, path: str) -> Any:
    node = root
    for raw in ref[1:].split("/")[1:] if ref != "#" else []:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise SchemaError(f"'$ref' {ref[:80]!r} points at nothing", path)
    return node


def _infer_type(schema: dict) -> str | None:
    if any(k in schema for k in ("properties", "additionalProperties", "required")):
        return "object"
    if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in schema for k in ("minLength", "maxLength", "format")):
        return "string"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return None


def _count_bounds(schema: dict, low_key: str, high_key: str, path: str
                  ) -> tuple[int, int | None]:
    low, high = schema.get(low_key, 0), schema.get(high_key)
    for key, value in ((low_key, low), (high_key, high)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SchemaError(f"'{key}' must be a non-negative integer", path)
        if value > MAX_REPEAT:
            raise SchemaError(f"'{key}' above {MAX_REPEAT} is not supported", path)
    if high is not None and high < low:
        raise SchemaError(f"'{high_key}' is below '{low_key}'", path)
    return low, high


def _integer_bounds(schema: dict, path: str) -> tuple[int | None, int | None]:
    low = high = None
    for key, sign in (("minimum", 1), ("exclusiveMinimum", 1), ("maximum", -1),
                      ("exclusiveMaximum", -1)):
        value = schema.get(key)
        if value is None or isinstance(value, bool):  # draft-04 boolean exclusives
            if value is True:
                raise SchemaError(f"boolean '{key}' (draft-04) is not supported", path)
            continue
        if not isinstance(value, int | float) or abs(value) >= 10 ** INT_DIGITS:
            raise SchemaError(f"'{key}' must be a number below 10^{INT_DIGITS}", path)
        exclusive = key.startswith("exclusive")
        if sign > 0:
            bound = int(value) + 1 if exclusive and value == int(value) else -int(-value // 1)
            low = bound if low is None else max(low, bound)
        else:
            bound = int(value) - 1 if exclusive and value == int(value) else int(value // 1)
            high = bound if high is None else min(high, bound)
    return low, high


@lru_cache(maxsize=256)
def _schema_grammar(schema_text: str) -> str:
    builder = GrammarBuilder()
    root = builder.schema(json.loads(schema_text), "value")
    return builder.build(root)


def schema_grammar(schema: Any) -> str:
    """A grammar for JSON values valid under `schema`; raises SchemaError. Cached by schema."""
    return _schema_grammar(json.dumps(schema, ensure_ascii=False))


def json_object_grammar() -> str:
    """A grammar for any JSON object."""
    builder = GrammarBuilder()
    return builder.build(builder.primitive("json-object"))
