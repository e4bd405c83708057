"""Storing a batch so that one bad item cannot fail the others (batch_isolation)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdefender.pipeline.batch_isolation import store_isolating
from iotdefender.store.availability import StoreUnavailable


class Table:
    """A store with one transaction per call: all of a batch or none of it, like BatchStore."""

    def __init__(self, refuse: set[int], down_after: int | None = None) -> None:
        self.rows: list[int] = []
        self.calls = 0
        self._refuse = refuse
        self._down_after = down_after

    def store(self, items: Sequence[int]) -> int:
        self.calls += 1
        if self._down_after is not None and self.calls > self._down_after:
            raise StoreUnavailable("connection refused")
        bad = [i for i in items if i in self._refuse]
        if bad:
            raise TypeError(f"Integer exceeds 64-bit range ({bad[0]})")
        self.rows += items
        return len(items)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.sets(st.integers(0, 299), max_size=6))
def test_only_the_culprits_are_set_aside(size, refuse):
    table = Table(refuse)
    outcome = store_isolating(table.store, list(range(size)))
    culprits = {i for i in range(size) if i in refuse}
    assert set(outcome.failed) == culprits
    assert sorted(table.rows) == sorted(outcome.stored) == [i for i in range(size) if i not in culprits]
    assert outcome.unavailable == [] and outcome.outage is None
    assert all("64-bit" in str(e) for e in outcome.failed.values())
    if not culprits:
        assert table.calls == 1  # a clean batch costs nothing extra
    else:  # O(k log n), not O(n)
        assert table.calls <= 1 + 2 * len(culprits) * max(1, size.bit_length())


def test_an_outage_is_not_bisected():
    table = Table(set(), down_after=0)
    outcome = store_isolating(table.store, list(range(1000)))
    assert table.calls == 1 and outcome.stored == [] and sorted(outcome.unavailable) == list(range(1000))
    assert isinstance(outcome.outage, StoreUnavailable)


def test_an_outage_during_isolation_leaves_the_rest_unavailable():
    table = Table({3}, down_after=2)  # the whole batch fails, one half is stored, then the database goes
    outcome = store_isolating(table.store, list(range(8)))
    assert sorted(outcome.stored) == sorted(table.rows)
    assert set(outcome.stored) | set(outcome.unavailable) | set(outcome.failed) == set(range(8))
    assert not set(outcome.stored) & set(outcome.unavailable)
    assert outcome.outage is not None


@pytest.mark.parametrize("error, outage", [(sqlite3.OperationalError("disk I/O error"), True),
                                           (StoreUnavailable("x"), True), (TypeError("x"), False),
                                           (ValueError("NUL"), False)])
def test_what_counts_as_an_outage(error, outage):
    from iotdefender.store.availability import is_unavailable

    assert is_unavailable(error) is outage


def test_a_fatal_error_is_raised_at_once_not_bisected():
    """Cluster mode's Fenced: nobody's fault, and nothing more may be stored."""

    class Fenced(RuntimeError):
        pass

    calls = []

    def store(items: Sequence[int]) -> int:
        calls.append(list(items))
        raise Fenced("superseded")

    with pytest.raises(Fenced):
        store_isolating(store, list(range(8)), fatal=(Fenced,))
    assert calls == [list(range(8))]
