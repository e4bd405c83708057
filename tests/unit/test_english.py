"""Numbers and units as the evidence and the console write them: comparisons that read true, units
that agree with their number."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdefender.english import number, numbers_apart, quantity, unit_words
from iotdefender.metrics_catalog import METRIC_UNITS


def test_numbers_read_as_before_when_nothing_is_close() -> None:
    assert [number(x) for x in (20112, 640, 12.5, 0.031, 4.0, 0.0)] == ["20,112", "640", "12.5", "0.031", "4", "0"]


def test_a_value_just_above_an_edge_does_not_read_as_equal_to_it() -> None:
    assert numbers_apart(36.21, 36.19) == ["36.21", "36.19"]
    assert numbers_apart(2640, 2639.7) == ["2,640", "2,639.7"]
    assert numbers_apart(4, 3.9999) == ["4", "3.9999"]
    assert numbers_apart(5.0, 5.0) == ["5", "5"]


@given(st.floats(0, 1e9), st.floats(0, 1e9))
def test_written_numbers_compare_as_the_numbers_do(a: float, b: float) -> None:
    x, y = (float(t.replace(",", "")) for t in numbers_apart(a, b))
    assert (x < y) == (a < b) and (x == y) == (a == b)


@pytest.mark.parametrize("metric", sorted(METRIC_UNITS))
def test_every_unit_agrees_with_its_number(metric: str) -> None:
    one, many = unit_words(METRIC_UNITS[metric])
    assert quantity(1, METRIC_UNITS[metric]) == f"1 {one}" and quantity(2, METRIC_UNITS[metric]) == f"2 {many}"
    assert one != many and "(" not in one + many  # every unit has its singular; notes are not units
    assert quantity(0, METRIC_UNITS[metric]).endswith(many) and quantity(1.5, METRIC_UNITS[metric]).endswith(many)


def test_units_read_in_english() -> None:
    assert quantity(1, "messages") == "1 message" and quantity(1, "IP addresses") == "1 IP address"
    assert quantity(1, "minutes (unverified)") == "1 minute" and quantity(2048, "bytes") == "2,048 bytes"
    assert quantity(3, "") == "3"
