"""``iotdefender backtest --start/--end``: the times the API accepts, refused on the command line
otherwise (``1e20`` used to be sent, to be refused by the service with a less direct message)."""

from __future__ import annotations

import argparse

import pytest

from iotdefender.backtest.command import parse_time

NOW = 1_700_000_000.0


def test_ages_epoch_seconds_and_iso_dates():
    assert parse_time("7d", NOW) == NOW - 7 * 86400
    assert parse_time("1700000000.5", NOW) == 1700000000.5
    assert parse_time("2024-01-02T03:04:05Z", NOW) == 1704164645.0


@pytest.mark.parametrize("text", ["1e20", "inf", "nan", "-1e20", "yesterday", ""])
def test_times_no_api_timestamp_can_hold_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="not a time"):
        parse_time(text, NOW)
