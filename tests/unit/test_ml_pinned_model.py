"""The model a small sampled training gives, pinned to a tolerance: training's speed-ups (refit.py's
pass over every datapoint, the crowding counts, the second fit of changed devices) must not move it.

A fleet of bench/ml_fleet.py (its kinds of rhythm, noise and anomalies), a fifth of it with anomalies
planted, sampled as at 100k devices (~235 datapoints a device of 4,032) and grouped by device: the
path 100k devices x 14 days takes. Not a digest of the bytes: another CPU's numpy SIMD paths round
float32 sums differently in the last bits, which moves a digest, not these values beyond 1e-4. A
change that means to move them says so and measures quality (bench/ml_detect.py); to see the values,
run this file with ``-s`` (each failure prints what training gives).
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from bench import ml_fleet
from iotdefender.engine.ml import TrainingData, TrainingSettings, train

DEVICES = 300
# Per cohort (the fleet's row, 16 tail cohorts, the crowding devices'): LOW, MEDIUM, HIGH.
THRESHOLDS = [
    [3.7047929763793945, 5.318233275006216, 9.095037404689004], [3.32865686901314, 3.921982139959006, 4.753424308822899],
    [3.3121978808204373, 3.8905918864130946, 4.753424308822899], [3.2905267314918953, 3.8978840422159684, 4.753424308822899],
    [3.4592817092790193, 4.376640339786336, 5.9854384360007], [3.543979750552776, 4.210108167956309, 5.031392279388637],
    [3.350864015511266, 3.9638709946634636, 4.753424308822899], [3.2905267314918953, 3.8905918864130946, 4.753424308822899],
    [3.443126840089768, 4.335453806900105, 5.8358666327872815], [3.4082010535029506, 3.9031272490991853, 4.753424308822899],
    [3.3374980388837576, 3.924991499267964, 4.753424308822899], [3.347493096450985, 4.097250110879246, 5.222245150636403],
    [3.4038917829179374, 4.101593453316211, 5.022982274997364], [3.3241896901439594, 3.8905918864130946, 4.753424308822899],
    [3.3734051743377185, 3.9887498386048934, 4.759557037660777], [4.904628819695462, 7.957123549794306, 17.66280223913614],
    [5.164055424671342, 8.326156183846717, 17.701451057666027], [5.402294653518009, 7.564164960765441, 11.514649488818195]]
COHORT_SIZES = [0, 19, 18, 19, 18, 18, 16, 19, 18, 19, 19, 19, 17, 19, 19, 19, 18, 6]
# Every 37th device: its level (log scale, relative to the fleet's centre) and spread.
OFFSETS = [0.3615243434906006, -0.5148410797119141, 0.011068538762629032, -0.522537887096405, -0.7384785413742065,
           -0.6889379024505615, -0.37305405735969543, 0.20167437195777893, 0.03152414411306381]
SCALES = [0.06686654686927795, 0.0929073914885521, 0.20050305128097534, 0.1944669932126999, 0.07465158402919769,
          0.19012707471847534, 0.14149965345859528, 0.09361466765403748, 0.2613504230976105]


@pytest.fixture(scope="module")
def trained() -> tuple[dict[str, object], TrainingData]:
    fleet = ml_fleet.make_devices(DEVICES, seed=21)
    period = ml_fleet.generate(fleet, 0, 14, seed=22)
    ml_fleet.inject(fleet, period, 0.2, seed=7)
    data = TrainingData(period.device, fleet.names, period.time, period.value)
    model = train(data, trained_at=float(period.time[-1]), settings=TrainingSettings(max_datapoints=DEVICES * 235))
    return msgspec.msgpack.decode(model.to_bytes()), data


def test_a_small_sampled_training_gives_the_pinned_thresholds_levels_and_spreads(
        trained: tuple[dict[str, object], TrainingData]) -> None:
    stored, _ = trained
    assert isinstance(stored["offset"], bytes) and isinstance(stored["scale"], bytes)
    assert isinstance(stored["cohort"], bytes)
    offset = np.frombuffer(stored["offset"], dtype=np.float32)[::37]
    scale = np.frombuffer(stored["scale"], dtype=np.float32)[::37]
    cohorts = np.bincount(np.frombuffer(stored["cohort"], dtype=np.uint8), minlength=len(THRESHOLDS)).tolist()
    print("thresholds", stored["cohort_thresholds"], "cohorts", cohorts, "offsets", offset.tolist(),
          "scales", scale.tolist())
    np.testing.assert_allclose(np.array(stored["cohort_thresholds"]), THRESHOLDS, rtol=1e-4)
    assert cohorts == COHORT_SIZES
    np.testing.assert_allclose(offset, OFFSETS, rtol=0, atol=1e-4)
    np.testing.assert_allclose(scale, SCALES, rtol=1e-4)


def test_the_pinned_training_takes_the_sampled_grouped_path_with_crowding_devices(
        trained: tuple[dict[str, object], TrainingData]) -> None:
    stored, data = trained
    summary = stored["summary"]
    assert isinstance(summary, dict)
    assert summary["datapoints_used"] < len(data) and bool(np.all(np.diff(data.device) >= 0))
    # The fleet's row, 16 tail cohorts and the crowding devices' cohort: the pin covers their test.
    assert len(THRESHOLDS) == 18 and COHORT_SIZES[17] > 0
