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
# Per cohort (the fleet's row, the tail cohorts — at 300 devices 13, as each holds at least
# shrinkage.COHORT_DEVICES devices — and the crowding devices'): LOW, MEDIUM, HIGH.
THRESHOLDS = [
    [3.651599168777466, 5.3473209964631065, 9.45717378674939], [3.2905267314918953, 3.8905918864130946, 4.753424308822899],
    [3.2905267314918953, 3.8905918864130946, 4.753424308822899], [3.3643704994855925, 4.104390205561755, 5.198872036822372],
    [3.4658122106648266, 4.2167396651814055, 5.291639494840753], [3.2905267314918953, 3.8905918864130946, 4.753424308822899],
    [3.2905267314918953, 3.8905918864130946, 4.753424308822899], [3.3472330264142425, 3.906845996552935, 4.753424308822899],
    [3.2905267314918953, 3.8905918864130946, 4.753424308822899], [3.360190841483072, 4.12441739912301, 5.26335923968176],
    [3.2905267314918953, 3.8905918864130946, 4.753424308822899], [3.2905267314918953, 3.8905918864130946, 4.753424308822899],
    [4.23319689767904, 6.211246779341727, 11.248280589719414], [5.293585562215503, 8.51220418632424, 17.787864236959155],
    [5.542583096302817, 7.576135904057821, 10.909987246278579],
]
COHORT_SIZES = [0, 24, 22, 23, 22, 20, 23, 23, 23, 23, 21, 23, 23, 23, 7]
# Every 37th device: its level (log scale, relative to the fleet's centre) and spread.
OFFSETS = [0.37095510959625244, -0.5182962417602539, 0.020570984110236168, -0.5249178409576416, -0.738076388835907,
           -0.6941893696784973, -0.3617745637893677, 0.19704826176166534, 0.02216821350157261]
SCALES = [0.064537413418293, 0.0921911746263504, 0.20024552941322327, 0.19404280185699463, 0.07392064481973648,
           0.18999223411083221, 0.1411021500825882, 0.09237273782491684, 0.2609323263168335]


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
    # The fleet's row, the tail cohorts and the crowding devices' cohort (the last): the pin covers
    # their test.
    assert len(THRESHOLDS) == len(COHORT_SIZES) and COHORT_SIZES[-1] > 0
