"""`audit show --since/--until` values: a date, a date and time, a time of today, an age
(`90s`, `30m`, `2h`, `7d`, `2w`), `now`, `today` or `yesterday`.

Local time unless the value carries an offset. Pure: `now` is passed in.
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["FORMS", "TimeSpecError", "parse_when"]

FORMS = "2026-12-01, 2026-12-01T08:30, '2026-12-01 08:30', 08:30, 30m, 2h, 7d, 2w, today, yesterday"

_AGE = re.compile(r"(\d+)\s*([smhdw])")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_CLOCK = re.compile(r"\d{1,2}:\d{2}(?::\d{2})?")


class TimeSpecError(ValueError):
    """Not a form `parse_when` knows; the message lists the forms."""


def parse_when(text: str, now: dt.datetime) -> dt.datetime:
    """The instant `text` names, an aware datetime; `now` is aware (local zone)."""
    value = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if value == "now":
        return now
    if value == "today":
        return midnight
    if value == "yesterday":
        return midnight - dt.timedelta(days=1)
    m = _AGE.fullmatch(value)
    if m is not None:
        return now - dt.timedelta(**{_UNIT[m.group(2)]: int(m.group(1))})
    if _CLOCK.fullmatch(value):
        try:
            clock = dt.time.fromisoformat(value.zfill(5) if len(value) == 4 else value)
        except ValueError:
            raise TimeSpecError(f"{text!r} is not a time of day") from None
        return dt.datetime.combine(midnight.date(), clock, now.tzinfo)
    try:
        parsed = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise TimeSpecError(f"{text!r} is not a date or time; use one of: {FORMS}") from None
    return parsed if parsed.tzinfo else parsed.astimezone()
