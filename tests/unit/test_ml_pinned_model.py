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
# shrinkage.COHORT_DEVICES devices: 12 near-normal and one of the devices whose tail is told apart
# as heavy, calibration.Layout — and the crowding devices'): LOW, MEDIUM, HIGH.
THRESHOLDS = [
    [3.651597499847412, 5.35792709728475, 9.67871923000045], [3.2905267314918953, 3.9371612947771615, 5.28065006967921],
    [3.2941847651497747, 3.9146583381294207, 5.150174221892696], [3.3792350617255917, 4.222596479978211, 6.078997649906187],
    [3.4461651214299946, 4.223278649624401, 5.859378607563844], [3.2905267314918953, 3.8905918864130946, 4.95405827157159],
    [3.2905267314918953, 3.8905918864130946, 4.753424308822899], [3.4431314526086103, 4.304287587016251, 6.210394836749194],
    [3.2905267314918953, 3.8905918864130946, 4.876499781704317], [3.2905267314918953, 3.8986797808611633, 5.201461803784695],
    [3.2914582925040285, 3.9605250581463807, 5.30922741534243], [3.2927238045081304, 3.9149461885589796, 5.149684434871775],
    [3.2905267314918953, 3.8905918864130946, 4.916618877981795], [5.272224640322158, 8.54775737873246, 20.429768053963233],
    [5.598479785673365, 8.214936161001585, 16.903518112442228],
]
COHORT_SIZES = [0, 23, 21, 23, 21, 20, 22, 22, 23, 22, 21, 22, 22, 31, 7]
# Every 37th device: its level (log scale, relative to the fleet's centre) and spread.
OFFSETS = [0.37095510959625244, -0.5182962417602539, 0.020570984110236168, -0.5249178409576416, -0.738076388835907,
           -0.6941893696784973, -0.3617745637893677, 0.19704826176166534, 0.02216821350157261]
SCALES = [0.06481117755174637, 0.09258224815130234, 0.20109497010707855, 0.19486592710018158, 0.07423420995473862,
          0.19079817831516266, 0.14170069992542267, 0.09276457875967026, 0.2620391845703125]


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
