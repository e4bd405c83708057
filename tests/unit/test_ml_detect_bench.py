"""bench/ml_detect.py at its smallest size: the benchmark runs end to end and its figures hang together."""

from __future__ import annotations

from bench import ml_detect


def test_the_smallest_benchmark_runs_and_the_model_beats_the_static_threshold() -> None:
    output = ml_detect.main(["--smallest", "--no-write"])
    detection = output["detection"]
    assert detection["judge_matches_vectorised_scoring"]
    assert detection["training_datapoints"] == 60 * 7 * 288
    results = detection["results"]
    assert set(results) == {"ml", "ml-sampled-as-at-100k", "static", "isolation-forest", "ml-trained-with-anomalies",
                            "static-trained-with-anomalies"}
    assert sum(detection["anomalies_in_training_of_the_with_anomalies_rows"].values()) >= 12
    for per_level in results.values():
        assert set(per_level) == {"LOW", "MEDIUM", "HIGH"}
        for figures in per_level.values():
            assert 0 <= figures["precision"] <= 1 and 0 <= figures["recall"] <= 1
            assert figures["false_alarms"] <= figures["alarms"]
    # Fewer false alarms the more confident the level, and the learned model finds what a fleet-wide band misses.
    ml = results["ml"]
    assert ml["LOW"]["false_alarms"] >= ml["HIGH"]["false_alarms"]
    assert ml["HIGH"]["recall"] > results["static"]["HIGH"]["recall"]
    assert all(ml[level]["f1"] > results["static"][level]["f1"] for level in ("LOW", "MEDIUM", "HIGH"))
    assert ml["LOW"]["recall_spikes_5_sigma_or_more"] == 1.0
    timing = output["training_time"]
    assert timing["datapoints"] == 200 * 2 * 288 and timing["scoring"]["microseconds_per_datapoint"] > 0
    assert timing["memory"]["stored_bytes_per_device"] > 0
