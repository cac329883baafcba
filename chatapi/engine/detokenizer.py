"""Incremental detokenization: UTF-8-safe text from token bytes, with stop strings held back."""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class IncrementalDetokenizer:
    """Turns a stream of token byte pieces into text that is safe to show.

    Never emits part of a UTF-8 character or any part of a stop string. When several stop
    strings occur, the one that completes first wins (the earliest-starting on a tie), so
    the result does not depend on how the text was split into tokens.
    """

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stop if s))
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # decoded text held back: it may be the start of a stop string
        self._emitted: list[str] = []
        self.stopped = False
        self.stop_string: str | None = None

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._emitted)

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now safe to show (may be "")."""
        if self.stopped:
            return ""
        new = self._decoder.decode(piece, final=False)
        if not new:
            return ""
        # A stop can only start inside the held-back text, so this window is all we search.
        window = self._pending + new
        match = self._first_stop(window)
        if match is not None:
            start, stop = match
            self.stopped = True
            self.stop_string = stop
            self._pending = ""
            return self._emit(window[:start])
        hold = self._held_suffix_len(window)
        self._pending = window[len(window) - hold :]
        return self._emit(window[: len(window) - hold])

    def finish(self) -> str:
        """End of generation (EOS or length): return the text still held back."""
        # Bytes still in the decoder are an unfinished character: drop them, never show U+FFFD.
        self._decoder.reset()
        if self.stopped:
            return ""
        released, self._pending = self._pending, ""
        return self._emit(released)

    def _emit(self, out: str) -> str:
        if out:
            self._emitted.append(out)
        return out

    def _first_stop(self, window: str) -> tuple[int, str] | None:
        """The (start, stop) that completes first in window, earliest start on a tie."""
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            start = window.find(stop)
            if start < 0:
                continue
            candidate = (start + len(stop), start, stop)
            if best is None or candidate[:2] < best[:2]:
                best = candidate
        return None if best is None else (best[1], best[2])

    def _held_suffix_len(self, window: str) -> int:
        """Length of the longest suffix of window that is a proper prefix of a stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(window)), longest, -1):
                if window.endswith(stop[:size]):
                    longest = size
                    break
        return longest
