"""Live backtest preview: how many devices a behavior would have alarmed, re-counted as its threshold moves.

A full backtest of a week of a 10k fleet spends most of its time reading the columnar history,
sorting it by device and summing windows (bench/README.md, "Backtests"); none of that depends on
the threshold. So the preview keeps those prepared arrays (per series, range and window) and a
threshold change costs one comparison and one pass of the vectorised alarm state machine — the
same functions ``runner._vectorised`` uses, so a preview and a full run agree by construction.
Counts are remembered too, per criteria and coverage: editing one behavior of six re-counts one.

Only what the vectorised path computes exactly is previewed (numeric static behaviors); the other
kinds answer ``supported: false`` with the reason, and the full backtest replays them.
A prepared week of one metric is ~20 bytes a datapoint (400 MB at 10k devices), so few are kept,
within a byte budget.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from sqlalchemy.engine import Engine

from iotdefender.backtest.runner import BacktestRequest, _measured, _series_of, fast_path_threshold
from iotdefender.engine.evaluator import DELTA_METRICS
from iotdefender.engine.vectorised import alarms_raised, violating
from iotdefender.store import history
from iotdefender.store.database import long_statements

MAX_PREPARED = 2
# The service keeps at most this much prepared history (a week of 10k devices is ~400 MB a series;
# of 100k devices, ~4 GB: answered, then dropped, rather than held).
MAX_PREPARED_BYTES = 1 << 30
MAX_COUNTED = 256


@dataclass(frozen=True)
class Prepared:
    """One series over one range, sorted by device then time, windowed as the behavior sums it."""

    things: list[str]  # thing_index -> name
    thing_index: np.ndarray
    times: np.ndarray
    measured: np.ndarray
    present: np.ndarray  # per name: has datapoints in the range (counted once: np.unique of 20M costs ~1 s)
    first_at: float | None  # the first and last datapoint: a range with little history must say so
    last_at: float | None

    @property
    def nbytes(self) -> int:
        return self.thing_index.nbytes + self.times.nbytes + self.measured.nbytes + self.present.nbytes


class BacktestPreview:
    """Counts of devices in alarm per behavior, from prepared arrays kept between calls."""

    def __init__(self, engine: Engine, max_prepared: int = MAX_PREPARED, max_bytes: int = MAX_PREPARED_BYTES,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._engine = engine
        self._max = max_prepared
        self._max_bytes = max_bytes
        self._clock = clock
        self._prepared: OrderedDict[tuple, Prepared] = OrderedDict()
        self._counted: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()  # one preparation at a time: a second would only share the cores

    def preview(self, request: BacktestRequest) -> dict[str, Any]:
        """{"behaviors": [{behaviorName, supported, devicesInAlarm, alarms, ...}], "seconds": ...}."""
        started = self._clock()
        out = [self._one(request, behavior) for behavior in request.behaviors]
        return {"startTime": request.start, "endTime": request.end, "behaviors": out,
                "seconds": round(self._clock() - started, 4)}

    def _one(self, request: BacktestRequest, behavior: dict[str, Any]) -> dict[str, Any]:
        name = behavior.get("name")
        threshold = fast_path_threshold(behavior) if behavior.get("metric") else None
        if threshold is None:
            return {"behaviorName": name, "supported": False,
                    "reason": "previewed only for static numeric behaviors; run the backtest for this one"}
        started = self._clock()
        key, prepared, cached = self._prepare(request, behavior)
        covered = np.fromiter((request.covers(t) for t in prepared.things), dtype=bool, count=len(prepared.things))
        # Only the behavior being edited changed: the others answer from the last count.
        counted_key = (key, orjson.dumps(behavior["criteria"], option=orjson.OPT_SORT_KEYS), covered.tobytes(),
                       request.invalidation_period, request.end)
        with self._lock:
            counted = self._counted.get(counted_key)
        if counted is None:
            counted = self._count(request, behavior, threshold, prepared, covered)
            with self._lock:
                self._counted[counted_key] = counted
                while len(self._counted) > MAX_COUNTED:
                    self._counted.popitem(last=False)
        return {"behaviorName": name, "supported": True, "threshold": threshold, **counted, "cached": cached,
                "seconds": round(self._clock() - started, 4)}

    def _count(self, request: BacktestRequest, behavior: dict[str, Any], threshold: float, prepared: Prepared,
               covered: np.ndarray) -> dict[str, Any]:
        things, times, measured = prepared.thing_index, prepared.times, prepared.measured
        if len(things) and not covered.all():
            keep = covered[things]
            things, times, measured = things[keep], times[keep], measured[keep]
        criteria = behavior["criteria"]
        raised = alarms_raised(things, times, measured, violating(criteria["comparisonOperator"], measured, threshold),
                               criteria.get("consecutiveDatapointsToAlarm") or 1,
                               criteria.get("consecutiveDatapointsToClear") or 1,
                               request.invalidation_period, request.end)
        result: dict[str, Any] = {
            "devicesInAlarm": int(len(np.unique(raised))), "alarms": int(len(raised)),
            "devicesEvaluated": int(np.count_nonzero(prepared.present & covered)), "datapoints": int(len(times))}
        result["historyStart"], result["historyEnd"] = prepared.first_at, prepared.last_at
        if not len(times):
            result["note"] = ("no retained datapoints of this metric in the range: only metrics used by a "
                              "behavior or listed in additionalMetricsToRetainV2 of a monitoring profile are kept")
        return result

    def _prepare(self, request: BacktestRequest, behavior: dict[str, Any]) -> tuple[tuple, Prepared, bool]:
        duration = (behavior.get("criteria") or {}).get("durationSeconds")
        window = duration if duration is not None and behavior.get("metric") in DELTA_METRICS else None
        key = (_series_of(behavior), request.start, request.end, window, request.time_scale)
        with self._lock:
            found = self._prepared.get(key)
            if found is not None:
                self._prepared.move_to_end(key)
                return key, found, True
            with long_statements(), self._engine.connect() as conn:
                fetched = history.fetch_as_evaluated(conn, key[0], request.start, request.end)
            points = history.as_evaluated(fetched, key[0])  # decoded with no transaction open (history.Fetched)
            things, times, measured = _measured(points, behavior, request.time_scale)
            present = np.bincount(things, minlength=len(points.things)).astype(bool) if len(things) else \
                np.zeros(len(points.things), dtype=bool)
            prepared = Prepared(list(points.things), things, times, measured, present,
                                float(times.min()) if len(times) else None, float(times.max()) if len(times) else None)
            if prepared.nbytes <= self._max_bytes:  # larger: answered, not kept (each change re-reads)
                self._prepared[key] = prepared
            while len(self._prepared) > self._max or sum(p.nbytes for p in self._prepared.values()) > self._max_bytes:
                self._prepared.popitem(last=False)
                self._counted.clear()  # counts of a dropped history would never be asked again
            return key, prepared, False
