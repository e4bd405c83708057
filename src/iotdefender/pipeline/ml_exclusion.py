"""What a refresh must not learn from: the datapoints the active model judged anomalous.

A model trained on a window that holds an anomaly learns the anomaly as normal: the device's own
spread and its cohort's tail thresholds widen, so it never alarms again, and with few datapoints
per model a handful of anomalous reports widen the whole fleet's bands and clear open alarms while
the anomaly goes on. Production detectors train a refresh on the window minus what the current
model flagged; so does this service (``MlTrainer``). The first build has no model to ask and
trains on everything.

Which datapoints: a datapoint is left out when the active model judged it at least LOW (the most
sensitive level, so a behavior at any level is protected) **and** it is either HIGH or next to
another such datapoint of the same device (a run of two or more). Leaving out every LOW datapoint
would not do: LOW is reached by 1 in 1,000 *normal* datapoints, and the MEDIUM and HIGH thresholds
are read from exactly that tail (calibration.py); cutting it at every refresh would pull the
thresholds in, refresh after refresh, until the model alarms on noise. Isolated LOW or MEDIUM
datapoints are that normal tail and stay; a sustained anomaly (a run) and a single extreme value
(HIGH: 2 in a million normal datapoints) go.

**Until it is the device's normal.** A device whose flagged datapoints are half or more of its
datapoints in the window, the first of them half the training period ago or earlier, has had the
"anomaly" for half the training period: that is its new normal (a changed workload, a fleet-wide
shift, a return after a silence), and its datapoints are all kept, so the next model learns it.
Without this, a model that had learned a wrong normal could never unlearn it: every new datapoint
was judged against it and left out, the builds ran short of datapoints, and the behavior expired
for good (found end to end: a fleet-wide shift of bytes out left every new datapoint out, and a
count model trained on a silence kept judging every message HIGH). The price: an anomaly that lasts half the training period (7 days by default) is learned.
Both conditions: half of the datapoints alone let a device with less history than the period (new
in the fleet, or reporting with gaps) have an anomaly learned sooner (an outside-in run: learned
after 37 % of the period, a custom metric's LOW band became 55-160 for a normal of about 30).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml import BehaviorModel, TrainingData

_HIGH = 2  # BehaviorModel.levels' rank of HIGH (-1 normal, 0 LOW, 1 MEDIUM)


def anomalous(model: BehaviorModel, data: TrainingData, settled_by: float) -> npt.NDArray[np.bool_]:
    """Per datapoint of ``data``, whether a refresh leaves it out (see the module's docstring): a
    device's anomaly is its new normal if it began at ``settled_by`` (half the training period
    before the window's end) or earlier."""
    ranks = model.levels(data)
    flagged = ranks >= 0
    result = ranks >= _HIGH
    if not flagged.any():
        return result
    order = _device_time_order(data)
    device, hit = data.device[order], flagged[order]
    same_as_next = device[:-1] == device[1:]
    run = np.zeros(len(order), dtype=bool)
    pair = hit[:-1] & hit[1:] & same_as_next
    run[:-1] |= pair
    run[1:] |= pair
    result[order] |= run
    return result & ~_new_normal(data.device, data.time, result, settled_by)


def _device_time_order(data: TrainingData) -> npt.NDArray[np.intp]:
    """The permutation that puts each device's datapoints together, in time order: the identity,
    without sorting, when they come so already (the trainer hands them over so; a sort of a
    fleet's 14 days costs tens of seconds)."""
    device, times = data.device, data.time
    same = device[1:] == device[:-1]
    if bool((device[1:] >= device[:-1]).all()) and bool((times[1:] >= times[:-1])[same].all()):
        return np.arange(len(device))
    order: npt.NDArray[np.intp] = np.lexsort((times, device))
    return order


def _new_normal(device: npt.NDArray[np.int32], times: npt.NDArray[np.float64], flagged: npt.NDArray[np.bool_],
                settled_by: float) -> npt.NDArray[np.bool_]:
    """Per datapoint: its device's flagged datapoints are half or more of its datapoints, and the
    first of them is at ``settled_by`` or before."""
    if not len(device):
        return np.zeros(0, dtype=bool)
    size = int(device.max()) + 1
    total = np.bincount(device, minlength=size)
    hits = np.bincount(device, weights=flagged.astype(np.float64), minlength=size)
    first = np.full(size, np.inf)
    np.minimum.at(first, device[flagged], times[flagged])
    return ((2 * hits >= total) & (first <= settled_by))[device]


def without_anomalies(model: BehaviorModel | None, data: TrainingData, settled_by: float) -> tuple[TrainingData, int]:
    """``data`` minus what ``model`` judged anomalous (``anomalous``), and how many datapoints that
    left out; ``data`` whole when there is no model yet (the first build)."""
    if model is None or not len(data):
        return data, 0
    keep = ~anomalous(model, data, settled_by)
    left_out = int(len(keep) - keep.sum())
    if not left_out:
        return data, 0
    return TrainingData(device=data.device[keep], devices=data.devices, time=data.time[keep],
                        value=data.value[keep]), left_out
