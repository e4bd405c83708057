"""Small pieces of English shared by the console, the evidence of events and the command-line tools.

Numbers and units are written here only: the evidence sentence of an ML event, the console's
evidence dialog and tables, and the behavior builder (through its catalog) all read them from this
module, so "1 messages" or "36.2 is above 36.2" cannot come back in one place while fixed in another.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

# The singular of each unit a metric is counted in (metrics_catalog.METRIC_UNITS holds the plurals).
UNIT_SINGULAR: Mapping[str, str] = MappingProxyType({
    "bytes": "byte", "messages": "message", "failures": "failure", "IP addresses": "IP address",
    "connection attempts": "connection attempt", "disconnects": "disconnect", "minutes": "minute",
    "packets": "packet", "ports": "port", "connections": "connection",
})

# Significant digits of a number as people read it (640 bytes, 12.5, 0.031); never fewer than its
# integer part has (20,112, not 2.01e+04).
DIGITS = 3
_MAX_DIGITS = 17  # a double's digits: two numbers that still read alike are equal


def count_of(n: Any, noun: str) -> str:
    """``1 device``, ``2 devices``: counts in sentences read as English ("1 devices" did not)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def some_of(names: Sequence[str], shown: int = 5) -> str:
    """``a, b, c``, or its first ``shown`` ``and others``: a list in a message, bounded."""
    return ", ".join(names[:shown]) + (" and others" if len(names) > shown else "")


def unit_words(unit: str) -> tuple[str, str]:
    """(singular, plural) of a unit as METRIC_UNITS writes it; a note in parentheses is dropped."""
    plural = unit.split(" (", 1)[0]
    return UNIT_SINGULAR.get(plural, plural), plural


def number(x: float, digits: int = DIGITS) -> str:
    """``x`` with ``digits`` significant digits (more if its integer part has more), thousands
    separated, trailing zeros dropped: 20,112; 640; 12.5; 0.031; 4."""
    if not math.isfinite(x):
        return str(x)
    magnitude = math.floor(math.log10(abs(x))) if x else 0
    decimals = max(0, digits - 1 - magnitude)
    text = f"{x:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _read(text: str) -> float:
    return float(text.replace(",", ""))


def numbers_apart(*values: float) -> list[str]:
    """The values written with one number of significant digits, the fewest (at least DIGITS) at
    which every pair compares as the numbers do: a value just above a band's edge never reads as
    equal to it ("36.21 is above 36.19", not "36.2 is above 36.2")."""
    for digits in range(DIGITS, _MAX_DIGITS + 1):
        texts = [number(v, digits) for v in values]
        shown = [_read(t) for t in texts]
        if all((a < b) == (x < y) and (a == b) == (x == y)
               for i, (a, x) in enumerate(zip(values, shown)) for b, y in zip(values[i + 1:], shown[i + 1:])):
            return texts
    return [repr(v) for v in values]


def quantity(value: float | str, unit: str) -> str:
    """A number with its unit in the right number: 1 message, 0 messages, 2,048 bytes, 1.5 bytes.
    ``value`` is a number, or one already written by ``number``/``numbers_apart``."""
    text = value if isinstance(value, str) else number(value)
    if not unit:
        return text
    one, many = unit_words(unit)
    return f"{text} {one if text == '1' else many}"
