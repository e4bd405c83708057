"""Which security profiles monitor a thing: the control plane as seen by ingest and the engine.

A thing is monitored by the profiles attached to ``all/things``, to ``all/registered-things`` or
``all/unregistered-things`` (whether it is in the registry), and to each of its thing groups and
their ancestors (a profile on a parent group covers its child groups). The snapshot is read once
and dropped whenever the control plane changes (``invalidate``); per-thing registry facts are
read on first use and cached until then.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from iotdefender.controlplane import hierarchy
from iotdefender.controlplane.behavior_rules import metric_names_used
from iotdefender.engine.series import behavior_series
from iotdefender.metrics_catalog import AWAY_SERIES, SIZE_METRICS, is_cloud_side, size_series
from iotdefender.store import catalog, profiles, registry


@dataclass(frozen=True)
class Snapshot:
    profiles: dict[str, dict[str, Any]]
    attachments: dict[str, list[str]]  # target ARN -> profile names
    parents: dict[str, str | None]
    custom_metric_types: dict[str, str]
    dimensions: dict[str, list[str]]  # TOPIC_FILTER dimension name -> topic filters
    things: dict[str, tuple[bool, tuple[str, ...]]] = field(default_factory=dict)  # name -> (registered, groups)
    retained: dict[tuple[str, ...], frozenset[str]] = field(default_factory=dict)  # profile names -> series
    # (registered, groups) -> monitoring profiles: shared by every thing with the same facts.
    monitors: dict[tuple[bool, tuple[str, ...]], list[dict[str, Any]]] = field(default_factory=dict)


class MonitoringIndex:
    def __init__(self, engine: Engine, arn_prefix: str) -> None:
        self._engine = engine
        self._arn_prefix = arn_prefix  # "arn:aws:iot:{region}:{account}:"
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._changes = 0  # invalidations so far

    def arn(self, resource: str) -> str:
        """The ARN of one of this account's resources (``topic/<name>``, ``thinggroup/<name>``)."""
        return self._arn_prefix + resource

    def invalidate(self) -> None:
        with self._lock:
            self._snapshot = None
            self._changes += 1

    def _current(self) -> Snapshot:
        """The cached snapshot, or a new read of the control plane. A read during which a change
        was announced is used by its caller but not cached: it may predate the change (it began
        before the change committed), and cached it would hide the change until the next one."""
        snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        changes = self._changes  # before the read: a change announced from now on is seen below
        with self._engine.connect() as conn:
            rows = {p["name"]: p for p in profiles.all_profiles(conn)}
            snapshot = Snapshot(rows, profiles.attachments(conn), registry.all_group_parents(conn),
                                catalog.custom_metric_types(conn),
                                catalog.dimension_values(conn))
        with self._lock:
            if self._changes != changes:
                return snapshot
            if self._snapshot is None:
                self._snapshot = snapshot
            return self._snapshot

    def custom_metric_types(self) -> dict[str, str]:
        return self._current().custom_metric_types

    def _thing_facts(self, snapshot: Snapshot, thing: str) -> tuple[bool, tuple[str, ...]]:
        facts = snapshot.things.get(thing)
        if facts is None:
            with self._engine.connect() as conn:
                facts = snapshot.things[thing] = registry.registry_facts(conn, [thing])[thing]
        return facts

    def prime(self, things: list[str]) -> None:
        """Look up the registry facts of the things not seen yet in one go: a fleet reconnecting
        after a restart would otherwise cost two queries per device on its first report."""
        snapshot = self._current()
        unknown = [t for t in dict.fromkeys(things) if t not in snapshot.things]
        if unknown:
            with self._engine.connect() as conn:
                snapshot.things.update(registry.registry_facts(conn, unknown))

    def targets_of(self, thing: str) -> list[str]:
        """Every target ARN that covers the thing."""
        return self._targets_in(self._current(), thing)

    def _targets_in(self, snapshot: Snapshot, thing: str) -> list[str]:
        registered, groups = self._thing_facts(snapshot, thing)
        arns = [self._arn_prefix + "all/things",
                self._arn_prefix + ("all/registered-things" if registered else "all/unregistered-things")]
        seen: set[str] = set()
        for group in groups:
            for name in (group, *hierarchy.ancestors(group, snapshot.parents)):
                if name not in seen:
                    seen.add(name)
                    arns.append(self._arn_prefix + f"thinggroup/{name}")
        return arns

    def profiles_for(self, thing: str) -> list[dict[str, Any]]:
        """The profiles monitoring the thing, each once, by name."""
        return self._profiles_in(self._current(), thing)

    def _profiles_in(self, snapshot: Snapshot, thing: str) -> list[dict[str, Any]]:
        facts = self._thing_facts(snapshot, thing)
        known = snapshot.monitors.get(facts)
        if known is None:
            names = {n for arn in self._targets_in(snapshot, thing) for n in snapshot.attachments.get(arn, ())}
            known = snapshot.monitors[facts] = [snapshot.profiles[n] for n in sorted(names) if n in snapshot.profiles]
        return known

    def all_profiles(self) -> list[dict[str, Any]]:
        """Every security profile, attached or not."""
        return list(self._current().profiles.values())

    def profile(self, name: str) -> dict[str, Any] | None:
        return self._current().profiles.get(name)

    def dimensions(self) -> dict[str, list[str]]:
        return self._current().dimensions

    def retained_metrics(self, thing: str) -> frozenset[str]:
        """Series whose datapoints are kept for ListMetricValues: used by behaviors or listed in
        additionalMetricsToRetain(V2) of a monitoring profile (model documentation); a series with a
        dimension is ``metric|dimension|operator``."""
        snapshot = self._current()  # one snapshot throughout: the cache entry matches what it was built from
        monitoring = self._profiles_in(snapshot, thing)
        names = tuple(p["name"] for p in monitoring)
        known = snapshot.retained.get(names)
        if known is not None:
            return known
        series: set[str] = set()
        for profile in monitoring:
            series |= metric_names_used(profile["behaviors"] or [], profile["additional_metrics_to_retain"] or [],
                                        profile["additional_metrics_to_retain_v2"] or [])
            for item in list(profile["behaviors"] or []) + list(profile["additional_metrics_to_retain_v2"] or []):
                name = behavior_series(item)
                if item.get("metricDimension") and name is not None:
                    series.add(name)
        # A message size series is kept with its companion, whichever a behavior reads: each
        # window's largest and smallest message, for ListMetricValues and backtests of either
        # kind of behavior.
        series |= {part for s in series if s.split("|", 1)[0] in SIZE_METRICS for part in size_series(s)}
        # With any cloud-side series, the windows the device spent away, which ML Detect's
        # training leaves out of every cloud-side series (a behavior added later reads them too).
        if any(is_cloud_side(s) for s in series):
            series.add(AWAY_SERIES)
        snapshot.retained[names] = frozenset(series)
        return snapshot.retained[names]
