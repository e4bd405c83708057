"""The one gate every timestamp of a request passes: what the API accepts as an instant.

Timestamps arrive as ISO-8601 in query strings and as epoch seconds in JSON bodies (botocore's
serialisers), and people type either. Anything that is not a finite instant between the years 1
and 9999 (the range of ``datetime`` that botocore's own timestamp parser and every later
conversion rely on) is refused here with a ``ValueError`` whose text is the constraint, so the
API answers InvalidRequestException instead of letting ``OverflowError``, ``OSError`` or
botocore's ``RuntimeError("Unable to calculate correct timezone offset")`` escape as a 500.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from datetime import datetime, timezone
from typing import Any

#: 0001-01-01T00:00:00Z, the first instant a ``datetime`` can hold.
EARLIEST = -62135596800.0
#: 10000-01-01T00:00:00Z, the first instant past the last a ``datetime`` can hold (exclusive).
PAST_LATEST = 253402300800.0

CONSTRAINT = ("Member must be a timestamp (epoch seconds or ISO-8601) between 0001-01-01T00:00:00Z "
              "and 9999-12-31T23:59:59Z")


def epoch_seconds(value: Any) -> float:
    """``value`` (epoch seconds as a number or text, ISO-8601 text, or a ``datetime``) as epoch
    seconds; ``ValueError(CONSTRAINT)`` for anything else, NaN, infinities and instants out of range."""
    seconds = _to_seconds(value)
    if not (math.isfinite(seconds) and EARLIEST <= seconds < PAST_LATEST):
        raise ValueError(CONSTRAINT)
    return seconds


def _to_seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(CONSTRAINT)
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int too large for a float
            raise ValueError(CONSTRAINT) from None
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
        return _timestamp(moment)
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(CONSTRAINT) from None
        return _timestamp(parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc))
    raise ValueError(CONSTRAINT)


def _timestamp(moment: datetime) -> float:
    try:
        return moment.timestamp()
    except (OverflowError, OSError, ValueError):  # e.g. 0001-01-01T00:00:00+05:00
        raise ValueError(CONSTRAINT) from None


def answered(seconds: float) -> float:
    """An instant as the API answers it: in milliseconds, as AWS's timestamps are."""
    return round(seconds, 3)


def stored_range(start: float, end: float) -> tuple[float, float]:
    """The stored instants (microseconds) whose ``answered`` value lies in [start, end].

    A client resumes from the time it was given (ListViolationEvents from an event's own
    ``violationEventTime``): an event stored at .063791 is answered .064, and compared as stored it
    fell before its own answered time (35 of 60 events in an outside-in test). The bounds are the
    milliseconds inside [start, end], widened by the half millisecond that rounds into them; counted
    in decimal from each bound's shortest text (a float's own product by 1000 is off by more than
    a microsecond at these magnitudes: 4294967296.711 * 1000 is ...711.0005)."""
    first_ms = int((Decimal(repr(start)) * 1000).to_integral_value(rounding=ROUND_CEILING))
    last_ms = int((Decimal(repr(end)) * 1000).to_integral_value(rounding=ROUND_FLOOR))
    return (first_ms - 0.5) / 1000, (last_ms + 0.5) / 1000
