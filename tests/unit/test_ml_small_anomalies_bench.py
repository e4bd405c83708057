"""bench/ml_small_anomalies.py at its smallest: it runs end to end and its figures hang together."""

from __future__ import annotations

import json
from pathlib import Path

from bench import ml_small_anomalies


def test_the_sparse_fleet_with_anomalies_runs_and_counts_what_it_finds(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    output = ml_small_anomalies.main(["--repeats", "1", "--output", str(path)])
    assert json.loads(path.read_text())["trainings"] == 1
    levels = output["levels"]
    assert set(levels) == {"LOW", "MEDIUM", "HIGH"}
    for figures in levels.values():
        assert 0 <= figures["false_alarms"] <= figures["alarms"] and 0 <= figures["recall"] <= 1
        found, of = figures["spikes_5_mad_or_more_found"]["all"]
        assert 0 <= found <= of and of > 0
    # A level flags what every more confident one flags: it finds at least as much.
    assert levels["LOW"]["found"] >= levels["MEDIUM"]["found"] >= levels["HIGH"]["found"] > 0
