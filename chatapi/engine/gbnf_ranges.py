"""GBNF pieces with no schema in them: alternations, repetition counts, and the alternatives
that match exactly the integers of a range (no leading zeros)."""

from __future__ import annotations

from collections.abc import Iterable


def alt(options: Iterable[str]) -> str:
    options = list(dict.fromkeys(options))
    return options[0] if len(options) == 1 else "(" + " | ".join(options) + ")"


def repeat(low: int, high: int | None) -> str:
    if high is None:
        return "*" if low == 0 else ("+" if low == 1 else f"{{{low},}}")
    if (low, high) == (0, 1):
        return "?"
    return f"{{{low}}}" if low == high else f"{{{low},{high}}}"


def int_range(low: int, high: int) -> list[str]:
    """GBNF alternatives matching exactly the integers low..high (no leading zeros)."""
    out = []
    if low < 0:
        negative = uint_range(max(1, -high), -low) if high < 0 else uint_range(1, -low)
        out.append('"-" ' + alt(negative))
    if high >= 0:
        out += uint_range(max(low, 0), high)
    return out


def uint_range(low: int, high: int) -> list[str]:
    out = []
    start = low
    while start <= high:
        digits = len(str(start))
        top = min(high, 10 ** digits - 1)
        out += same_length(str(start), str(top))
        start = top + 1
    return out


def digits(low: str, high: str) -> str:
    return f'"{low}"' if low == high else f"[{low}-{high}]"


def same_length(low: str, high: str) -> list[str]:
    """Digit strings of equal length from low to high (both included)."""
    common = 0
    while common < len(low) and low[common] == high[common]:
        common += 1
    if common == len(low):
        return [f'"{low}"']
    head = f'"{low[:common]}" ' if common else ""
    low, high = low[common:], high[common:]
    rest = len(low) - 1
    if rest == 0:
        return [head + digits(low, high)]
    tail = f" [0-9]{{{rest}}}"
    out = []
    first = int(low[0])
    if low[1:] != "0" * rest:
        out += [f'{head}"{low[0]}" {x}' for x in same_length(low[1:], "9" * rest)]
        first += 1
    last = int(high[0])
    closing = []
    if high[1:] != "9" * rest:
        closing = [f'{head}"{high[0]}" {x}' for x in same_length("0" * rest, high[1:])]
        last -= 1
    if first <= last:
        out.append(head + digits(str(first), str(last)) + tail)
    return out + closing
