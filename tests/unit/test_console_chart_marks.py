"""Thresholds and alarm periods drawn on a device's charts come from its profiles and events."""

from __future__ import annotations

from iotdefender.console.chart_marks import chart_marks

PROFILE = {"name": "p", "behaviors": [
    {"name": "hot", "metric": "temperature", "criteria": {"comparisonOperator": "less-than", "value": {"number": 70}}},
    {"name": "ports", "metric": "aws:listening-tcp-ports",
     "criteria": {"comparisonOperator": "in-port-set", "value": {"ports": [22]}}},
    {"name": "msgs", "metric": "aws:num-messages-sent", "metricDimension": {"dimensionName": "t"},
     "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}},
]}


def event(kind: str, at: float, violation: str = "v1", behavior: str = "hot") -> dict:
    return {"violationId": violation, "violationEventType": kind, "violationEventTime": at,
            "securityProfileName": "p", "behavior": next(b for b in PROFILE["behaviors"] if b["name"] == behavior)}


def test_numeric_thresholds_and_closed_and_open_alarm_periods():
    events = [event("alarm-cleared", 20.0), event("in-alarm", 10.0), event("in-alarm", 30.0, "v2")]
    marks = chart_marks([PROFILE], events, end=50.0)
    assert marks["temperature"]["thresholds"] == [{"label": "p/hot", "value": 70.0}]
    assert marks["temperature"]["alarms"] == [{"label": "p/hot", "start": 10.0, "end": 20.0},
                                              {"label": "p/hot", "start": 30.0, "end": 50.0}]
    assert marks["aws:num-messages-sent|t|IN"]["thresholds"] == [{"label": "p/msgs", "value": 5.0}]
    assert "aws:listening-tcp-ports" not in marks  # a set of ports has no line to draw


def test_an_ml_band_is_drawn_through_each_slot_centre_and_reaches_the_charts_edges():
    import numpy as np

    from iotdefender.console.chart_marks import add_model_bands
    from iotdefender.engine.ml import ConfidenceLevel, SeasonalClock, TrainingData, TrainingSettings, train

    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 1000, 5000))
    hours = np.floor(times / 10) % 24  # a 10 s hour: busier in the day's second half
    values = np.where(hours >= 12, 100.0, 10.0) * rng.uniform(0.9, 1.1, 5000)
    model = train(TrainingData(np.zeros(5000, np.int32), ["d"], times, values), trained_at=1000.0,
                  settings=TrainingSettings(clock=SeasonalClock(hour_seconds=10.0, origin=0.0)))
    behavior = {"name": "b", "metric": "m", "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}}
    marks = add_model_bands({}, [("p", behavior, model, 4, None)], "d", 1005.0, 1300.0)
    (band,) = marks["m"]["bands"]
    assert band["label"] == "p/b" and band["level"] == "LOW"
    assert band["version"] == 4 and band["trainedAt"] == 1000.0
    times_drawn = [p[0] for p in band["points"]]
    # Two 5 s slots an hour, centres at 2.5 + 5k: the edges and every centre between them.
    assert times_drawn == [1005.0, *[1007.5 + 5 * k for k in range(59)], 1300.0]
    assert all(p[1:] == list(model.band("d", p[0], ConfidenceLevel.LOW)) for p in band["points"])


def test_an_ml_band_starts_when_its_version_was_trained():
    """Before the active version was trained another version (or none) judged the datapoints: its
    band is not drawn there, so older alarms are not shaded over values inside today's band."""
    import numpy as np

    from iotdefender.console.chart_marks import add_model_bands
    from iotdefender.engine.ml import SeasonalClock, TrainingData, TrainingSettings, train

    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 1000, 5000))
    model = train(TrainingData(np.zeros(5000, np.int32), ["d"], times, rng.uniform(90, 110, 5000)),
                  trained_at=1000.0, settings=TrainingSettings(clock=SeasonalClock(hour_seconds=10.0, origin=0.0)))
    behavior = {"name": "b", "metric": "m", "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}}
    (band,) = add_model_bands({}, [("p", behavior, model, 2, None)], "d", 500.0, 1300.0)["m"]["bands"]
    assert band["points"][0][0] == 1000.0 and min(p[0] for p in band["points"]) == 1000.0
    (before,) = add_model_bands({}, [("p", behavior, model, 2, None)], "d", 500.0, 900.0)["m"]["bands"]
    assert before["points"] == [] and before["version"] == 2


def test_a_counts_band_is_drawn_as_detection_applies_it():
    """A count metric's band has whole-count edges on the chart, as in the evidence (ml_behavior.band)."""
    import numpy as np

    from iotdefender.console.chart_marks import add_model_bands
    from iotdefender.engine.ml import SeasonalClock, TrainingData, TrainingSettings, train

    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 1000, 5000))
    model = train(TrainingData(np.zeros(5000, np.int32), ["d"], times, rng.integers(2, 6, 5000).astype(float)),
                  trained_at=1000.0, settings=TrainingSettings(clock=SeasonalClock(hour_seconds=10.0, origin=0.0)))
    behavior = {"name": "b", "metric": "aws:num-established-tcp-connections",
                "criteria": {"mlDetectionConfig": {"confidenceLevel": "LOW"}}}
    (band,) = add_model_bands({}, [("p", behavior, model, 1, None)], "d", 1000.0, 1300.0)[
        "aws:num-established-tcp-connections"]["bands"]
    assert band["points"] and all(p[1] == int(p[1]) and p[2] == int(p[2]) for p in band["points"])


def test_a_message_size_behavior_is_drawn_on_the_series_it_reads():
    sizes = {"name": "s", "behaviors": [
        {"name": "min", "metric": "aws:message-byte-size",
         "criteria": {"comparisonOperator": "greater-than-equals", "value": {"count": 5}}},
        {"name": "max", "metric": "aws:message-byte-size",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 900}}}]}
    marks = chart_marks([sizes], [], end=50.0)
    assert marks["aws:message-byte-size|smallest"]["thresholds"] == [{"label": "s/min", "value": 5.0}]
    assert marks["aws:message-byte-size"]["thresholds"] == [{"label": "s/max", "value": 900.0}]


def test_windows_away_are_shaded_on_cloud_side_charts_with_a_learned_band_only():
    """Runs of adjacent away windows are one period, from the first window's start to the last's
    end; a chart without a band (no ML behavior) or of a device-side series gets none."""
    from iotdefender.console.chart_marks import add_away_periods

    sent, size, bytes_out = "aws:num-messages-sent", "aws:message-byte-size", "aws:all-bytes-out"
    band = {"thresholds": [], "alarms": [], "bands": [{"label": "p/ml"}]}
    marks = {sent: dict(band), bytes_out: dict(band), "aws:num-disconnects": {"thresholds": [], "alarms": []},
             size: dict(band)}
    ends = [300.0 * k for k in range(1, 21)]
    away = [900.0, 1200.0, 1500.0, 3000.0]  # windows 2-4 (600-1500), then window 9 (2700-3000)
    add_away_periods(marks, away, {sent: ends, bytes_out: ends, "aws:num-disconnects": ends, size: [600.0]})
    assert marks[sent]["away"] == [{"start": 600.0, "end": 1500.0}, {"start": 2700.0, "end": 3000.0}]
    assert "away" not in marks[bytes_out] and "away" not in marks["aws:num-disconnects"]
    assert "away" not in marks[size]  # one datapoint: no window length to read
