"""Storing a batch so that one bad item cannot fail the others (batch_isolation)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdefender.pipeline.batch_isolation import store_isolating, together_or_apart
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


class Items:
    """Several items stored together in one transaction or each on its own (together_or_apart)."""

    def __init__(self, refuse: frozenset[int] = frozenset(), down: bool = False, down_after: int | None = None) -> None:
        self.rows: list[int] = []
        self.transactions = 0
        self._refuse, self._down, self._down_after = refuse, down, down_after

    def _begin(self) -> None:
        self.transactions += 1
        if self._down or (self._down_after is not None and self.transactions > self._down_after):
            raise sqlite3.OperationalError("unable to open database file")

    def together(self, items: Sequence[int]) -> list[int]:
        self._begin()
        if self._refuse & set(items):
            raise TypeError("a row the database refuses")
        self.rows += items
        return list(items)

    def apart(self, item: int) -> int:
        return self.together([item])[0]


def test_items_that_can_share_a_transaction_pay_one():
    items = Items()
    assert together_or_apart([1, 2, 3], items.together, items.apart) == [1, 2, 3]
    assert (items.rows, items.transactions) == ([1, 2, 3], 1)


def test_one_items_fault_fails_only_that_item_and_says_why_they_went_apart():
    items, heard = Items(refuse=frozenset({2})), []
    results = together_or_apart([1, 2, 3], items.together, items.apart, on_apart=heard.append)
    assert results[0] == 1 and isinstance(results[1], TypeError) and results[2] == 3
    assert items.rows == [1, 3] and [type(error) for error in heard] == [TypeError]


def test_an_outage_fails_every_item_at_once_each_with_its_own_error():
    items = Items(down=True)
    results = together_or_apart([1, 2, 3], items.together, items.apart)
    assert [type(result) for result in results] == [StoreUnavailable] * 3
    assert len({id(result) for result in results}) == 3
    assert all(isinstance(result.__cause__, sqlite3.OperationalError) for result in results)
    assert items.transactions == 1  # not one more connection attempt per item


def test_an_outage_while_apart_fails_the_items_still_waiting_without_trying_them():
    items = Items(refuse=frozenset({1}), down_after=2)  # together fails on item 1, item 1 alone, then down
    results = together_or_apart([1, 2, 3, 4], items.together, items.apart)
    assert isinstance(results[0], TypeError)
    assert isinstance(results[1], sqlite3.OperationalError)
    assert [type(result) for result in results[2:]] == [StoreUnavailable] * 2
    assert items.transactions == 3 and items.rows == []


def test_items_that_cannot_share_a_transaction_are_stored_apart():
    items = Items()
    assert together_or_apart([1, 2], None, items.apart) == [1, 2]
    assert items.transactions == 2


def test_at_most_so_many_go_in_one_transaction_in_order():
    items = Items()
    weights = {1: 3, 2: 3, 3: 9, 4: 1, 5: 1}
    assert together_or_apart([1, 2, 3, 4, 5], items.together, items.apart, most=6,
                             size=weights.__getitem__) == [1, 2, 3, 4, 5]
    assert items.transactions == 3  # [1, 2], [3] (larger than 6: alone), [4, 5]
    assert items.rows == [1, 2, 3, 4, 5]


def test_an_outage_in_one_run_fails_the_later_runs_without_trying_them():
    items = Items(down_after=1)
    results = together_or_apart([1, 2, 3, 4], items.together, items.apart, most=2)
    assert results[:2] == [1, 2]
    assert [type(result) for result in results[2:]] == [StoreUnavailable] * 2
    assert items.transactions == 2 and items.rows == [1, 2]
