"""ML Detect's time constants scale with --time-scale like every other period, and settings that
cannot train a model are refused at start."""

from __future__ import annotations

import argparse

from iotdefender.settings import DAY, Settings, add_serve_arguments, settings_from


def parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(list(argv)))


def test_defaults_are_aws_periods_divided_by_the_time_scale():
    settings = parse("--time-scale", "1000")
    assert settings.effective_ml_training_period == 14 * DAY / 1000
    assert settings.effective_ml_refresh_period == DAY / 1000
    assert settings.effective_ml_expiry == 30 * DAY / 1000
    assert settings.ml_min_datapoints == 25_000  # a count, not a time: not scaled
    assert settings.ml_problem() is None


def test_explicit_flags_win_over_the_scaled_defaults():
    settings = parse("--time-scale", "1000", "--ml-training-period", "12", "--ml-refresh-period", "2",
                     "--ml-expiry", "30", "--ml-min-datapoints", "400")
    assert (settings.effective_ml_training_period, settings.effective_ml_refresh_period,
            settings.effective_ml_expiry, settings.ml_min_datapoints) == (12, 2, 30, 400)


def test_metric_retention_shorter_than_the_training_period_is_refused():
    problem = parse("--metric-retention", "3600", "--ml-training-period", "7200").ml_problem()
    assert problem is not None and "--metric-retention" in problem
    assert parse("--metric-retention", "7200", "--ml-training-period", "7200").ml_problem() is None


def test_non_positive_periods_and_counts_are_refused():
    assert "--ml-refresh-period" in (parse("--ml-refresh-period", "0").ml_problem() or "")
    assert "--ml-min-datapoints" in (parse("--ml-min-datapoints", "0").ml_problem() or "")
    assert "--ml-expiry" in (parse("--ml-refresh-period", "60", "--ml-expiry", "60").ml_problem() or "")
