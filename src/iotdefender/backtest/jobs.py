"""Backtest jobs: a request document in, a job with progress out, the result when it ends.

One document shape serves the API extension (``POST /_iotdefender/backtests``), the console and
``iotdefender backtest``:

    {"securityProfileName": "p",            # an existing profile: its behaviors and targets ...
     "behaviors": [Behavior, ...],           # ... or these (new or edited behaviors, AWS's shape)
     "targets": ["arn:...:all/things"],      # default: the profile's targets, or all things
     "startTime": 1700000000, "endTime": 1700604800,   # epoch seconds; default: the last 24 hours
     "thresholds": {"behaviorName": [1, 2, 5]}}         # optional sweep per behavior

Behaviors are checked with ValidateSecurityProfileBehaviors' rules, so a backtest accepts exactly
what a security profile would. Jobs run one at a time on a worker thread (a backtest is CPU-bound;
two at once would only share the same cores) and are kept in memory for an hour after they end.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from iotdefender.contract.errors import invalid_request, not_found
from iotdefender.contract.service_model import service_model
from iotdefender.contract.timestamps import epoch_seconds
from iotdefender.contract.validation_report import problem, validation_error
from iotdefender.contract.validation import validate_input, validate_value
from iotdefender.backtest.read_budget import check_readable, default_max_datapoints
from iotdefender.backtest.runner import (BACKTEST_PROFILE, BacktestRequest, _series_of, fast_path_threshold,
                                         run_backtest)
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.security_profiles import validate_security_profile_behaviors
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store import profiles

log = structlog.get_logger("iotdefender.backtest")
KEEP_FINISHED_S = 3600.0
DEFAULT_RANGE_S = 86400.0


@dataclass
class Job:
    backtest_id: str
    request: BacktestRequest
    status: str = "QUEUED"  # QUEUED | RUNNING | SUCCEEDED | FAILED
    progress: float = 0.0
    message: str = ""
    result: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def document(self, with_result: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"backtestId": self.backtest_id, "status": self.status,
                               "progress": round(self.progress, 4), "message": self.message,
                               "createdAt": self.created, "finishedAt": self.finished}
        if with_result and self.result is not None:
            out["result"] = self.result
        return out


def _number(spec: dict[str, Any], key: str, default: float) -> float:
    """An instant of the request: epoch seconds in the range every API timestamp has."""
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_request(f"{key} must be a number of epoch seconds")
    try:
        return epoch_seconds(value)
    except ValueError as refusal:
        raise validation_error([problem(value, key, str(refusal))]) from None


def resolve_request(ctx: ServiceContext, monitoring: MonitoringIndex, spec: Any, now: float,
                    time_scale: float, invalidation_period: float, max_datapoints: int = 0) -> BacktestRequest:
    """Check a request document and turn it into a runnable request (InvalidRequest otherwise,
    also when its range holds more datapoints than a backtest reads at once: read_budget.py)."""
    if not isinstance(spec, dict):
        raise invalid_request("The backtest request must be a JSON object")
    name = spec.get("securityProfileName")
    behaviors = spec.get("behaviors")
    targets = spec.get("targets")
    if name is not None and not isinstance(name, str):
        raise invalid_request("securityProfileName must be a string")
    if name is not None:
        validate_value(service_model().shape_for("SecurityProfileName"), name, "securityProfileName")
    stored = None
    if name is not None:
        with ctx.engine.connect() as conn:
            stored = profiles.get(conn, name)
            stored_targets = profiles.targets_of(conn, name) if stored else []
        if stored is None and behaviors is None:
            raise not_found(f"Security profile {name} does not exist")
        if behaviors is None:
            behaviors = stored["behaviors"] if stored else []
        if targets is None and stored_targets:
            targets = stored_targets
    if not isinstance(behaviors, list) or not behaviors:
        raise invalid_request("Give behaviors, or the securityProfileName of a profile that has some")
    validate_input(service_model().operation_model("ValidateSecurityProfileBehaviors").input_shape,
                   {"behaviors": behaviors})
    verdict = validate_security_profile_behaviors(ctx, {"behaviors": behaviors})
    if not verdict["valid"]:
        raise invalid_request(" ".join(e["errorMessage"] for e in verdict["validationErrors"]))
    if targets is None:
        targets = [ctx.arn("all/things")]
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise invalid_request("targets must be a list of security profile target ARNs")
    for index, target in enumerate(targets):
        validate_value(service_model().shape_for("SecurityProfileTargetArn"), target, f"targets[{index}]")
    end = _number(spec, "endTime", now)
    start = _number(spec, "startTime", end - DEFAULT_RANGE_S / time_scale)
    if end <= start:
        raise invalid_request("endTime must be later than startTime")
    thresholds = spec.get("thresholds") or {}
    if not isinstance(thresholds, dict) or not all(
            isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
            for v in thresholds.values()):
        raise invalid_request("thresholds must map behavior names to lists of numbers")
    names = [str(b.get("name")) for b in behaviors]
    unknown = sorted(set(thresholds) - set(names))
    if unknown:  # a mistyped name would otherwise sweep nothing, silently
        raise invalid_request(f"thresholds name behaviors that are not in this backtest: {', '.join(unknown)} "
                              f"(its behaviors: {', '.join(names) or 'none'})")
    read_at_once = [_series_of(b) for b in behaviors if b.get("metric") and fast_path_threshold(b) is not None]
    if read_at_once and max_datapoints > 0:
        with ctx.engine.connect() as conn:
            check_readable(conn, read_at_once, start, end, max_datapoints)
    wanted = set(targets)
    everything = ctx.arn("all/things") in wanted

    def covers(thing: str) -> bool:
        return everything or not wanted.isdisjoint(monitoring.targets_of(thing))

    sweeps = [thresholds.get(b.get("name")) for b in behaviors]
    return BacktestRequest(behaviors=behaviors, start=start, end=end, covers=covers,
                           profile_name=name or BACKTEST_PROFILE,
                           time_scale=time_scale,
                           invalidation_period=invalidation_period,
                           sweeps={b.get("name"): s for b, s in zip(behaviors, sweeps) if s is not None})


class BacktestJobs:
    def __init__(self, ctx: ServiceContext, monitoring: MonitoringIndex, time_scale: float,
                 invalidation_period: float, max_datapoints: int | None = None) -> None:
        """``max_datapoints``: the read budget (read_budget.py); None: a quarter of the memory; 0: none."""
        self._max_datapoints = default_max_datapoints() if max_datapoints is None else max_datapoints
        self._ctx = ctx
        self._monitoring = monitoring
        self._time_scale = time_scale
        self._invalidation_period = invalidation_period
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: list[Job] = []
        self._wake = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None

    def resolve(self, spec: Any) -> BacktestRequest:
        """Check a request document as ``submit`` does, without queueing it (the console's preview)."""
        return resolve_request(self._ctx, self._monitoring, spec, time.time(), self._time_scale,
                               self._invalidation_period, self._max_datapoints)

    def submit(self, spec: Any) -> Job:
        job = Job(uuid.uuid4().hex, self.resolve(spec))
        with self._lock:
            self._forget_old()
            self._jobs[job.backtest_id] = job
            self._queue.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="backtests", daemon=True)
                self._worker.start()
            self._wake.notify()
        return job

    def get(self, backtest_id: str) -> Job:
        job = self._jobs.get(backtest_id)
        if job is None:
            raise not_found(f"Backtest {backtest_id} does not exist")
        return job

    def list(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)

    def _forget_old(self) -> None:
        cutoff = time.time() - KEEP_FINISHED_S
        for key in [k for k, j in self._jobs.items() if j.finished is not None and j.finished < cutoff]:
            del self._jobs[key]

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._wake.wait()
                job = self._queue.pop(0)
            self.run(job)

    def run(self, job: Job) -> None:
        """Run one job to its end on the calling thread."""
        job.status = "RUNNING"
        started = time.perf_counter()

        def progress(fraction: float, message: str) -> None:
            job.progress, job.message = min(max(fraction, 0.0), 1.0), message

        try:
            job.result = run_backtest(self._ctx.engine, job.request, progress)
            job.result["elapsedSeconds"] = round(time.perf_counter() - started, 3)
            job.status = "SUCCEEDED"
        except Exception as error:  # a defect or a database failure: the job says so, the service goes on
            log.exception("backtest_failed", backtest_id=job.backtest_id)
            job.status, job.message = "FAILED", f"{type(error).__name__}: {error}"
        finally:
            job.finished = time.time()
            log.info("backtest", backtest_id=job.backtest_id, status=job.status,
                     seconds=round(time.perf_counter() - started, 3))
