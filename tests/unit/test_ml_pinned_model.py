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
# as heavy, calibration.Layout — and the crowding devices'): LOW, MEDIUM, HIGH (on each side).
# The fleet's row (above, then below), moved on 2026-12-03 when the fleet's thresholds were read
# from every device's datapoints (levels as well as noise: tests/unit/test_ml_fleet_reach.py), not
# those of the devices without a band of their own (none here: their noise alone, 3.68 / 5.34 / 9.54
# on both sides); the tail cohorts' rows are alike on both sides (calibration.symmetric).
FLEET = [6.936401596884381, 10.820418135445326, 20.588645001343238, 3.5075683906942237, 4.212047438259278,
         5.184858318988043]
THRESHOLDS = [
    FLEET[:3], [3.2905267314918953, 3.8905918864130946, 5.163132559909169],
    [3.2905267314918953, 3.8905918864130946, 4.9927093150624815], [3.3641128133154434, 4.097546802054868, 5.581735926966453],
    [3.4239111050978224, 4.1913174361123975, 5.811593538773675], [3.2905267314918953, 3.8905918864130946, 4.903370682922837],
    [3.2905267314918953, 3.8905918864130946, 4.753424308822899], [3.470953428262113, 4.3991837848269455, 6.529414274311794],
    [3.2905267314918953, 3.8905918864130946, 5.026610152803034], [3.2905267314918953, 3.8905918864130946, 5.137062415489773],
    [3.2905267314918953, 3.924867252523034, 5.232951518971833], [3.2948682763721613, 3.8905918864130946, 4.984134290937522],
    [3.2905267314918953, 3.8905918864130946, 4.753424308822899], [5.269745545724242, 8.608976064244244, 21.120670567308316],
    [5.619543608858237, 8.341059173284059, 17.630062075034665],
]
COHORT_SIZES = [0, 23, 21, 23, 21, 20, 22, 22, 23, 22, 21, 22, 22, 31, 7]
# Every 37th device: its level (log scale, relative to the fleet's centre) and spread. Moved on
# 2026-12-03 by the fleet's centre per slot taken from values less their device's level (a fleet of
# two kinds far apart: tests/unit/test_ml_two_kinds.py), measured on bench/ml_detect.py (bench/README.md).
OFFSETS = [0.402971476316452, -0.49296432733535767, 0.057114098221063614, -0.48140084743499756, -0.699066162109375,
           -0.6463873386383057, -0.3210088312625885, 0.23798133432865143, 0.059497181326150894]
SCALES = [0.06542699784040451, 0.09303668141365051, 0.20086713135242462, 0.1955776810646057, 0.07315341383218765,
          0.19120781123638153, 0.1414639949798584, 0.09324437379837036, 0.2620053291320801]


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
    np.testing.assert_allclose(np.array(stored["cohort_thresholds"]),
                               [FLEET] + [row + row for row in THRESHOLDS[1:]], rtol=1e-4)
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
