"""Times are answered in milliseconds; a listing's bounds select by the answered time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from iotdefender.contract.timestamps import answered, stored_range

# Instants as the service stores them: time.time() floats from 2001 to 2286.
instants = st.floats(min_value=1e9, max_value=1e10, allow_nan=False, allow_infinity=False)


@given(instants)
def test_an_instant_is_inside_the_range_of_its_own_answered_time(t: float) -> None:
    lo, hi = stored_range(answered(t), answered(t))
    assert lo <= t <= hi


@given(instants, instants, instants)
def test_the_range_holds_exactly_the_instants_answered_inside_the_bounds(t: float, a: float, b: float) -> None:
    start, end = min(a, b), max(a, b)
    lo, hi = stored_range(start, end)
    inside = start <= answered(t) <= end
    # Within a float's spacing (2e-3 ms at 1e10 s) of half a millisecond, either side is right.
    if abs(abs(t * 1000 - round(t * 1000)) - 0.5) > 1e-2:
        assert (lo <= t <= hi) == inside, (t, start, end, lo, hi)


def test_a_stored_time_that_rounds_up_is_found_from_its_answered_time() -> None:
    """Stored .063791, answered .064: compared as stored it fell before its own answered time."""
    t = 1796367836.063791
    assert answered(t) == 1796367836.064
    lo, hi = stored_range(1796367836.064, 1796367836.064)
    assert lo <= t <= hi
    assert stored_range(1796367836.0631, 1796367836.0639)[0] >= stored_range(1796367836.0631, 1796367836.0639)[1]
