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
