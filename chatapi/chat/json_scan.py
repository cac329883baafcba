"""Small linear-time scanners over model text for the tool-call parser: JSON heads, strings and
values read as they stream, without backtracking or eval."""

from __future__ import annotations

import json
from typing import Any

WS = " \t\r\n"
HEAD_LIMIT = 512  # characters of `{"name": "…", "arguments":` before giving up on streaming


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in WS:
        i += 1
    return i


def parse_head(text: str) -> tuple[str, int] | bool | None:
    """Reads `{"name": "<name>", "arguments":` (or "parameters") at the start of `text`.
    Returns (name, index after the colon and spaces), None if more text is needed, False if
    the text takes another shape."""
    i = skip_ws(text, 0)
    name = None
    for expect in ("{", "name", ":", "NAME", ",", "arguments", ":"):
        i = skip_ws(text, i)
        if i >= len(text):
            return None
        if expect in "{:,":
            if text[i] != expect:
                return False
            i += 1
            continue
        end = string_end(text, i)
        if end is None:
            return None if len(text) - i < HEAD_LIMIT else False
        if end is False:
            return False
        try:
            value = json.loads(text[i:end])
        except ValueError:
            return False
        if expect == "NAME":
            name = value
        elif value != expect and not (expect == "arguments" and value == "parameters"):
            return False
        i = end
    i = skip_ws(text, i)
    if i >= len(text):
        return None
    return (name, i) if isinstance(name, str) else False


def string_end(text: str, i: int) -> int | bool | None:
    """Index after the JSON string starting at text[i]; None if unfinished, False if none."""
    if text[i] != '"':
        return False
    j = i + 1
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == '"':
            return j + 1
        j += 1
    return None


class ValueScanner:
    """Finds where one JSON value ends, fed in pieces, one pass over each character. Objects
    and arrays stream through as they come; a string value (arguments sent as a JSON string)
    is held until it ends and then decoded."""

    def __init__(self) -> None:
        self.kind = ""
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.done = False
        self._held = ""

    def feed(self, text: str) -> tuple[int, str]:
        """Consumes text up to the end of the value: (characters used, arguments text)."""
        i = 0
        if not self.kind:
            i = skip_ws(text, 0)
            if i == len(text):
                return i, ""
            self.kind = text[i]
        start = i
        while i < len(text) and not self.done:
            self._scan(text[i])
            i += 1
            if self.kind not in '{["' and self.done:
                i -= 1  # the delimiter that ended a bare value is not part of it
        piece = text[start:i]
        if self.kind == '"':
            self._held += piece
            if not self.done:
                return i, ""
            decoded = loads(self._held)
            return i, decoded if isinstance(decoded, str) else self._held
        if self.kind not in "{[":
            self._held += piece
            return i, self._held if self.done else ""
        return i, piece

    def pending(self) -> str:
        return "" if self.kind in "{[" else self._held

    def _scan(self, ch: str) -> None:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif ch == "\\":
                self.escaped = True
            elif ch == '"':
                self.in_string = False
                if self.depth == 0:
                    self.done = True
            return
        if self.kind not in '{["':
            if ch in WS or ch in ",}]":
                self.done = True
            return
        if ch == '"':
            self.in_string = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1
            if self.depth == 0:
                self.done = True


def loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def call_from(value: Any) -> tuple[str, str] | None:
    """(name, arguments JSON) from a parsed {"name": …, "arguments"|"parameters": …}."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        if not isinstance(loads(arguments), dict):
            return None
        return value["name"], arguments
    if not isinstance(arguments, dict):
        return None
    return value["name"], json.dumps(arguments, ensure_ascii=False)


def calls_in(text: str) -> list[tuple[str, str]] | None:
    """All calls in a llama3/mistral reply: JSON objects (or arrays of them) separated by
    whitespace or ';'. None if anything else is there."""
    decoder = json.JSONDecoder()
    calls: list[tuple[str, str]] = []
    i = skip_ws(text, 0)
    while i < len(text):
        try:
            value, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            return None
        for item in value if isinstance(value, list) else [value]:
            call = call_from(item)
            if call is None:
                return None
            calls.append(call)
        i = skip_ws(text, i)
        if i < len(text) and text[i] == ";":
            i = skip_ws(text, i + 1)
    return calls or None
