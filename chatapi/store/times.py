"""Times in the store are naive UTC datetimes; these read what people type."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^(\d{1,6})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def as_utc(value: datetime) -> datetime:
    """A naive UTC datetime; an aware one is converted, a naive one is taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def parse_when(text: str, *, future: bool) -> datetime:
    """`2026-01-31`, `2026-01-31T12:00`, `2026-01-31T12:00+02:00` (UTC unless given), unix
    seconds, or a span from now: `30d`, `12h`, `90m`, `2w` (later if `future`, else earlier)."""
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        span = timedelta(**{_UNITS[match[2]]: int(match[1])})
        return utcnow() + span if future else utcnow() - span
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC).replace(tzinfo=None)
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use 2026-01-31, 2026-01-31T12:00, unix "
                         "seconds, or 30d / 12h / 90m / 2w)") from None


def unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.replace(tzinfo=UTC).timestamp())
