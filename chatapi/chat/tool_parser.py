"""The streaming tool-call parser: model text in, content and call events out.

It reads text as it streams, in time linear in its length (str.find and one pass of a small JSON
scanner; no backtracking regex, never eval), holding back text that may be the start of a call.
Text that does not parse as a call of an offered function is ordinary content. See tools.py for
the formats.
"""

from __future__ import annotations

import enum
import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chatapi.chat.json_scan import (
    HEAD_LIMIT,
    WS,
    ValueScanner,
    call_from,
    calls_in,
    loads,
    parse_head,
    partial_suffix,
)

_ALPHABET = string.ascii_letters + string.digits
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
    _scanner: ValueScanner | None = None
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
        stripped = self._buf.lstrip(WS)
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
            self._content(events, buf[:at].rstrip(WS))  # spacing before a call is dropped
            hermes = self.fmt is ToolFormat.HERMES
            self._buf = buf[at + len(opener):] if hermes else buf[at:]
            self._scan_from = 0
            self._enter(_Mode.HEAD if hermes else _Mode.REST)
            return True
        keep = partial_suffix(buf, opener)
        cut = len(buf) - keep
        ws_start = len(buf[:cut].rstrip(WS))
        if cut - ws_start <= HELD_WS_LIMIT:
            cut = ws_start
        self._content(events, buf[:cut])
        self._buf = buf[cut:]
        self._scan_from = max(0, len(self._buf) - len(opener) + 1)
        return False

    def _head(self, events: list[Event]) -> bool:
        result = parse_head(self._buf)
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
        self._scanner = ValueScanner()
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
        call = call_from(loads(body))
        if call is not None and call[0] in self.names:
            self._emit_call(events, *call)
        else:
            self._content(events, "<tool_call>" + body + ("</tool_call>" if closed else ""))

    def _rest(self, events: list[Event], text: str) -> None:
        """The rest of the reply is calls; if any fails, all of it is content."""
        body = text.lstrip(WS)
        if self.fmt is ToolFormat.MISTRAL:
            body = body.removeprefix("[TOOL_CALLS]")
        calls = calls_in(body)
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
            text = text.lstrip(WS)
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
    if parser.calls and not content.strip(WS):
        return ParsedOutput(None, parser.calls)
    return ParsedOutput(content, parser.calls)
