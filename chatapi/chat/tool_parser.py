"""The streaming tool-call parser: model text in, content and call events out.

It reads text as it streams, in time linear in its length (str.find and one pass of a small JSON
scanner; no backtracking regex, never eval), holding back text that may be the start of a call.
Text that does not parse as a call of an offered function is ordinary content. See tools.py for
the formats.
"""

from __future__ import annotations

import enum
import json
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_ALPHABET = string.ascii_letters + string.digits
_WS = " \t\r\n"
HEAD_LIMIT = 512  # characters of `{"name": "…", "arguments":` before giving up on streaming
HELD_WS_LIMIT = 256  # whitespace held back before a possible call marker


class ToolFormat(enum.Enum):
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""  # JSON text, as the model wrote it

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


# --- events of the streaming parser -------------------------------------------------------------

@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    index: int
    fragment: str


Event = Content | CallStart | CallArguments


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))

# --- parsing ------------------------------------------------------------------------------------

class _Mode(enum.Enum):
    TEXT = 0  # ordinary content, watching for a call marker
    LEAD = 1  # nothing but whitespace yet: a bare call may open the reply
    HEAD = 2  # after a hermes <tool_call>: reading `{"name": "…", "arguments":`
    ARGS = 3  # streaming the arguments value
    TAIL = 4  # after the arguments: skipping to </tool_call>
    BLOCK = 5  # a hermes call that did not stream: buffered until </tool_call>
    REST = 6  # the rest of the reply is calls, buffered to the end


@dataclass
class ToolCallParser:
    """Turns the text a model streams into content and tool-call events, holding back text
    that may be the start of a call. Feed it deltas, then call finish() once."""

    fmt: ToolFormat
    names: frozenset[str]
    calls: list[ToolCall] = field(default_factory=list)
    _mode: _Mode = _Mode.TEXT
    _buf: str = ""
    _scan_from: int = 0
    _scanner: _ValueScanner | None = None
    _parts: list[str] = field(default_factory=list)
    _after_call: bool = False
    _window: str = ""

    def __post_init__(self) -> None:
        self._mode = _Mode.LEAD

    @property
    def _open(self) -> str | None:
        return {ToolFormat.HERMES: "<tool_call>", ToolFormat.MISTRAL: "[TOOL_CALLS]"}.get(
            self.fmt)

    def feed(self, text: str) -> list[Event]:
        events: list[Event] = []
        pending = text
        while pending:
            if self._mode in (_Mode.BLOCK, _Mode.REST):
                pending = self._collect(pending, events)
                continue
            self._buf += pending
            pending = ""
            while self._step(events):
                pass
            if self._mode in (_Mode.BLOCK, _Mode.REST):
                pending, self._buf = self._buf, ""
        return events

    def finish(self) -> list[Event]:
        """Flush what was held back: unfinished calls parse if they can, else are content."""
        events: list[Event] = []
        buf, self._buf = self._buf, ""
        if self._mode in (_Mode.TEXT, _Mode.LEAD):
            self._content(events, buf)
        elif self._mode is _Mode.HEAD:
            self._block(events, buf, closed=False)
        elif self._mode is _Mode.BLOCK:
            self._block(events, "".join(self._parts), closed=False)
        elif self._mode is _Mode.REST:
            self._rest(events, "".join(self._parts))
        elif self._mode is _Mode.ARGS and self._scanner is not None:
            self._args(events, self._scanner.pending())
        self._mode = _Mode.TEXT
        return events

    def _enter(self, mode: _Mode) -> None:
        self._mode = mode
        self._parts, self._window = [], ""

    def _collect(self, text: str, events: list[Event]) -> str:
        """BLOCK/REST: keep text (as a list: no quadratic string growth). A BLOCK ends at
        </tool_call>; returns the text after it, for the TEXT mode."""
        close = "</tool_call>"
        window = self._window + text
        at = window.find(close) if self._mode is _Mode.BLOCK else -1
        if at < 0:
            self._parts.append(text)
            self._window = window[-(len(close) - 1):]
            return ""
        joined = "".join(self._parts) + text
        end = len(joined) - len(window) + at
        self._block(events, joined[:end], closed=True)
        self._enter(_Mode.TEXT)
        return joined[end + len(close):]

    # --- one step of the state machine: returns whether to go on --------------------------------

    def _step(self, events: list[Event]) -> bool:
        mode = self._mode
        if mode is _Mode.LEAD:
            return self._lead(events)
        if mode is _Mode.TEXT:
            return self._text(events)
        if mode is _Mode.HEAD:
            return self._head(events)
        if mode is _Mode.ARGS:
            return self._stream_args(events)
        if mode is _Mode.TAIL:
            return self._tail()
        return False  # BLOCK and REST collect in feed()

    def _lead(self, events: list[Event]) -> bool:
        """A reply that opens with a bare call (llama3's only form; mistral's when the marker
        token is not shown; small hermes models that forget the tags) is all calls."""
        stripped = self._buf.lstrip(_WS)
        if not stripped:
            if len(self._buf) > HELD_WS_LIMIT:
                self._mode = _Mode.TEXT
            return False
        opener = self._open
        if opener and opener.startswith(stripped) and len(stripped) < len(opener):
            return False  # may still become the marker
        starts_call = stripped[0] == ("[" if self.fmt is ToolFormat.MISTRAL else "{")
        self._enter(_Mode.REST if starts_call and self.names else _Mode.TEXT)
        return self._mode is _Mode.TEXT

    def _text(self, events: list[Event]) -> bool:
        opener = self._open
        if not opener or not self.names:
            self._content(events, self._buf)
            self._buf = ""
            return False
        buf = self._buf
        at = buf.find(opener, self._scan_from)
        if at >= 0:
            self._content(events, buf[:at].rstrip(_WS))  # spacing before a call is dropped
            hermes = self.fmt is ToolFormat.HERMES
            self._buf = buf[at + len(opener):] if hermes else buf[at:]
            self._scan_from = 0
            self._enter(_Mode.HEAD if hermes else _Mode.REST)
            return True
        keep = _partial_suffix(buf, opener)
        cut = len(buf) - keep
        ws_start = len(buf[:cut].rstrip(_WS))
        if cut - ws_start <= HELD_WS_LIMIT:
            cut = ws_start
        self._content(events, buf[:cut])
        self._buf = buf[cut:]
        self._scan_from = max(0, len(self._buf) - len(opener) + 1)
        return False

    def _head(self, events: list[Event]) -> bool:
        result = _parse_head(self._buf)
        if result is None:  # need more text
            if len(self._buf) > HEAD_LIMIT:
                self._enter(_Mode.BLOCK)
            return False
        if result is False or result[0] not in self.names:
            self._enter(_Mode.BLOCK)
            return False
        name, end = result
        if self._buf[end] not in '{"':  # arguments must be an object (or one in a string)
            self._enter(_Mode.BLOCK)
            return False
        index = len(self.calls)
        self.calls.append(ToolCall(new_call_id(), name))
        events.append(CallStart(index, self.calls[-1].id, name))
        self._after_call = True
        self._buf = self._buf[end:]
        self._scanner = _ValueScanner()
        self._mode = _Mode.ARGS
        return True

    def _stream_args(self, events: list[Event]) -> bool:
        scanner = self._scanner
        assert scanner is not None
        used, fragment = scanner.feed(self._buf)
        self._buf = self._buf[used:]
        self._args(events, fragment)
        if not scanner.done:
            return False
        self._mode = _Mode.TAIL
        self._scan_from = 0
        return True

    def _args(self, events: list[Event], fragment: str) -> None:
        if fragment:
            self.calls[-1].arguments += fragment
            events.append(CallArguments(len(self.calls) - 1, fragment))

    def _tail(self) -> bool:
        """After the arguments: drop text up to </tool_call> (or a new <tool_call>, when the
        model forgot to close the call)."""
        close, reopen = "</tool_call>", "<tool_call>"
        at, again = self._buf.find(close), self._buf.find(reopen)
        if 0 <= again and (at < 0 or again < at):
            self._buf = self._buf[again:]
        elif at >= 0:
            self._buf = self._buf[at + len(close):]
        else:
            self._buf = self._buf[-(len(close) - 1):]
            return False
        self._mode, self._scan_from = _Mode.TEXT, 0
        return True

    # --- whole calls ------------------------------------------------------------------------

    def _block(self, events: list[Event], body: str, *, closed: bool) -> None:
        """A hermes call read whole: a call if it parses, else its text is content."""
        call = _call_from(_loads(body))
        if call is not None and call[0] in self.names:
            self._emit_call(events, *call)
        else:
            self._content(events, "<tool_call>" + body + ("</tool_call>" if closed else ""))

    def _rest(self, events: list[Event], text: str) -> None:
        """The rest of the reply is calls; if any fails, all of it is content."""
        body = text.lstrip(_WS)
        if self.fmt is ToolFormat.MISTRAL:
            body = body.removeprefix("[TOOL_CALLS]")
        calls = _calls_in(body)
        if calls and all(name in self.names for name, _ in calls):
            for name, arguments in calls:
                self._emit_call(events, name, arguments)
        else:
            self._content(events, text)

    def _emit_call(self, events: list[Event], name: str, arguments: str) -> None:
        index = len(self.calls)
        self.calls.append(ToolCall(new_call_id(), name, arguments))
        events.append(CallStart(index, self.calls[-1].id, name))
        self._after_call = True
        if arguments:
            events.append(CallArguments(index, arguments))

    def _content(self, events: list[Event], text: str) -> None:
        if self._after_call:  # spacing between a call and what follows it is dropped
            text = text.lstrip(_WS)
            self._after_call = not text
        if text:
            if events and isinstance(events[-1], Content):
                events[-1] = Content(events[-1].text + text)
            else:
                events.append(Content(text))


@dataclass
class ParsedOutput:
    content: str | None
    calls: list[ToolCall]


def parse_tool_calls(text: str, fmt: ToolFormat, names: Iterable[str]) -> ParsedOutput:
    """The whole reply at once: content (None when only calls were made) and the calls."""
    parser = ToolCallParser(fmt, frozenset(names))
    events = parser.feed(text) + parser.finish()
    content = "".join(e.text for e in events if isinstance(e, Content))
    if parser.calls and not content.strip(_WS):
        return ParsedOutput(None, parser.calls)
    return ParsedOutput(content, parser.calls)


# --- scanners -----------------------------------------------------------------------------------

def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker`."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _parse_head(text: str) -> tuple[str, int] | bool | None:
    """Reads `{"name": "<name>", "arguments":` (or "parameters") at the start of `text`.
    Returns (name, index after the colon and spaces), None if more text is needed, False if
    the text takes another shape."""
    i = _skip_ws(text, 0)
    name = None
    for expect in ("{", "name", ":", "NAME", ",", "arguments", ":"):
        i = _skip_ws(text, i)
        if i >= len(text):
            return None
        if expect in "{:,":
            if text[i] != expect:
                return False
            i += 1
            continue
        end = _string_end(text, i)
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
    i = _skip_ws(text, i)
    if i >= len(text):
        return None
    return (name, i) if isinstance(name, str) else False


def _string_end(text: str, i: int) -> int | bool | None:
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


class _ValueScanner:
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
            i = _skip_ws(text, 0)
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
            decoded = _loads(self._held)
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
            if ch in _WS or ch in ",}]":
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


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _call_from(value: Any) -> tuple[str, str] | None:
    """(name, arguments JSON) from a parsed {"name": …, "arguments"|"parameters": …}."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        if not isinstance(_loads(arguments), dict):
            return None
        return value["name"], arguments
    if not isinstance(arguments, dict):
        return None
    return value["name"], json.dumps(arguments, ensure_ascii=False)


def _calls_in(text: str) -> list[tuple[str, str]] | None:
    """All calls in a llama3/mistral reply: JSON objects (or arrays of them) separated by
    whitespace or ';'. None if anything else is there."""
    decoder = json.JSONDecoder()
    calls: list[tuple[str, str]] = []
    i = _skip_ws(text, 0)
    while i < len(text):
        try:
            value, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            return None
        for item in value if isinstance(value, list) else [value]:
            call = _call_from(item)
            if call is None:
                return None
            calls.append(call)
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == ";":
            i = _skip_ws(text, i + 1)
    return calls or None
