"""The cloud-side metrics pipeline: broker events in, one datapoint per device per window out.

Events come from the service's Mosquitto plugin (this service is the broker's ``BrokerObserver``)
or from an operator's broker through ``POST /_iotdefender/broker-events`` (``ingest_events``). At
each window boundary the closed window becomes datapoints for every monitored device — those seen
by the broker since the service started and every registered thing — 0 for the idle ones. They are
stored (retained series) and evaluated in one transaction, exactly like a device report.

A graceful stop keeps the windows not closed yet (``suspend``: each device's accumulators, in the
database) and the next start takes them back (``resume``): a window still open then carries on,
its counts and the new events together in one datapoint at its end; one that ended while the
service was down is closed at once, with the datapoint at its own end on the grid. So a restart
loses no window and adds none (docs/cloud-metrics.md). A crash (``kill -9``) still loses the
window open at the crash: its events were only in memory.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio.to_thread
import sqlalchemy.exc
import structlog
from prometheus_client import Counter
from sqlalchemy.engine import Engine

from iotdefender.cloud.aggregator import (CLOUD_METRICS, Aggregator, ClientWindow, connection_changes, dimension_specs,
                                         pack, unpack)
from iotdefender.cluster.partitions import partition_of
from iotdefender.ingest.report import ReportRejected, check_thing_name
from iotdefender.log_limits import LimitedLog
from iotdefender.net_address import ip_of_endpoint
from iotdefender.pipeline.batch_isolation import store_isolating
from iotdefender.pipeline.batch_store import BATCH_MAX, BatchStore
from iotdefender.metrics_catalog import is_cloud_side
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store import disconnections, open_windows, registry
from iotdefender.store.availability import log_unless_outage
from iotdefender.store.database import writing
from iotdefender.store.partition_selection import PartitionSelection

log = structlog.get_logger("iotdefender.cloud")

REFUSED_NOT_KEPT = Counter("iotdefender_cloud_refused_connects_not_kept",
                           "Refused CONNECTs of client ids that are no known device, past the number kept a window "
                           "(Aggregator.max_unknown_refused): counted for no device")
REFUSED_NOT_KEPT_LOG = LimitedLog(log, "cloud_refused_connect_not_kept", "iotdefender_cloud_refused_connects_not_kept_total")

_EVENT_TYPES = ("connect", "authorization-failure", "disconnect", "publish", "deliver")
MAX_INTAKE_EVENTS = 10_000
#: Things given their partition per round of closing (cluster mode): a fleet registered before the
#: registry kept partitions is done in rounds (10M: ~100 windows), reads staying complete meanwhile.
PARTITIONS_RECORDED_PER_ROUND = 100_000


class CloudEventIntake:
    """The broker's events into per-device windows (the ``BrokerObserver`` and the HTTP intake).

    On one box the ``CloudMetricsService`` below closes those windows itself; a cluster's broker
    node hands each closed window to the thing's detect node instead (cloud/cluster_windows.py).
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.time, closes_windows: bool = False,
                 minute_s: float = 60.0) -> None:
        self._clock = clock
        # Only what closes the windows keeps the devices seen (``Aggregator.keeps_devices``).
        self.aggregator = Aggregator(window_s, keeps_devices=closes_windows, minute_s=minute_s)
        # Every event, and every taking of windows, holds this: events come from the event loop
        # (the plugin's batches) and from worker threads (the HTTP intake runs in one), and one box
        # takes its closed windows on another. An event is placed in two steps (is its window
        # closed? then into that window's dict), and a window taken between them lost the event:
        # it went into a fresh dict of the closed window, deleted unread at the next close. Held
        # one event at a time, so the event loop never waits for more than one.
        self._events = threading.Lock()

    # -- event intake (event loop, or a worker thread for the HTTP intake) -----------------------
    def take_closed(self, now: float | None = None) -> list[tuple[int, dict[str, ClientWindow]]]:
        """Every window ended by ``now`` (default: the clock's) and not taken yet, oldest first,
        with its devices' parts (none for an idle one): no event counts in them any more (``_time``)."""
        with self._events:
            closed = self.aggregator.closed_windows(self._clock() if now is None else now)
            return [(window, self.aggregator.take(window)) for window in closed]

    def take_open(self) -> dict[int, dict[str, ClientWindow]]:
        """Every window not taken yet, the one still open included (a graceful stop)."""
        with self._events:
            windows = self.aggregator.open_windows()
            self.aggregator.windows.clear()
            return windows

    def _time(self, at: float | None) -> float:
        """When an event counts: when the broker saw it (``at``, the plugin's stamp) unless its
        window was closed meanwhile (a batch applied late: it counts now, in the open window, as
        an unstamped event does), else now. Unstamped, an event counted when its batch was applied
        (every 50 ms, plus the event loop's delay): a message sent 50-100 ms before a window's end
        counted in the next one (0.7 % of device-windows in an operator's trial)."""
        now = self._clock()
        if at is None or at > now:
            return now
        closed = self.aggregator.last_closed
        return at if closed is None or self.aggregator.index(at) > closed else now

    def connect_attempt(self, client_id: str | None, address: str | None, ok: bool, at: float | None = None) -> None:
        if not client_id:
            return
        with self._events:
            kept = self.aggregator.connect_attempt(client_id, address, ok, self._time(at))
        if not kept:
            REFUSED_NOT_KEPT.inc()
            REFUSED_NOT_KEPT_LOG("refused", client_id=client_id, limit=self.aggregator.max_unknown_refused,
                                 detail="a refused CONNECT of a client id that is no known device, past the "
                                        "number kept a window: not counted for anyone")

    def authorization_failure(self, client_id: str | None, topic: str | None, at: float | None = None) -> None:
        if client_id:
            with self._events:
                self.aggregator.authorization_failure(client_id, topic, self._time(at))

    def disconnect(self, client_id: str | None, at: float | None = None) -> None:
        if client_id:
            with self._events:
                self.aggregator.disconnect(client_id, self._time(at))

    def connection_open(self, client_id: str | None, address: str | None) -> None:
        if client_id:
            with self._events:
                self.aggregator.connection_open(client_id, address, self._clock())

    def connections_lost(self, at: float | None = None) -> None:
        with self._events:
            self.aggregator.connections_lost(self._time(at))

    def message_sent(self, client_id: str | None, topic: str, size: int, at: float | None = None) -> None:
        if client_id:
            with self._events:
                self.aggregator.message_sent(client_id, topic, size, self._time(at))

    def message_counts(self, client_id: str | None, sent: int, sent_bytes: int, received: int) -> None:
        if client_id:
            with self._events:
                self.aggregator.message_counts(client_id, sent, sent_bytes, received, self._clock())

    def message_received(self, client_id: str | None, topic: str, at: float | None = None) -> None:
        if client_id:
            with self._events:
                self.aggregator.message_received(client_id, topic, self._time(at))

    def ingest_events(self, document: Any) -> dict[str, Any]:
        """The broker-event intake: ``{"events": [{"type": ..., "clientId": ..., ...}]}``.

        Types: connect {clientId, ip, success}, authorization-failure {clientId, topic?},
        disconnect {clientId}, publish {clientId, topic, bytes} (device -> broker),
        deliver {clientId, topic} (broker -> device). Events count in the window they arrive in.
        Returns how many were accepted and, per position, why any was refused.
        """
        events = document.get("events") if isinstance(document, dict) else None
        if not isinstance(events, list):
            raise ValueError('expected {"events": [...]}')
        if len(events) > MAX_INTAKE_EVENTS:
            raise ValueError(f"at most {MAX_INTAKE_EVENTS} events per request")
        refused = []
        for index, event in enumerate(events):
            problem = self._apply(event)
            if problem:
                refused.append({"index": index, "reason": problem})
        return {"accepted": len(events) - len(refused), "refused": refused}

    def _apply(self, event: Any) -> str | None:
        if not isinstance(event, dict) or event.get("type") not in _EVENT_TYPES:
            return f"type must be one of {', '.join(_EVENT_TYPES)}"
        client = event.get("clientId")
        if not isinstance(client, str):
            return "clientId must be a non-empty string of at most 128 bytes"
        try:
            # It becomes the thing name of stored datapoints, so it obeys the rule of report topics:
            # one NUL would otherwise fail the whole window's write on PostgreSQL.
            check_thing_name(client)
        except ReportRejected as refused:
            return f"clientId: {refused.message}"
        kind, topic = event["type"], event.get("topic")
        if kind in ("publish", "deliver") and not isinstance(topic, str):
            return f"{kind} needs a topic"
        if kind == "connect":
            address = event.get("ip")
            if address is not None:
                if not isinstance(address, str):
                    return "ip must be a string: an IP address, ip:port or [IPv6]:port"
                try:
                    address = ip_of_endpoint(address)
                except ValueError as error:
                    return f"ip is not an IP address, ip:port or [IPv6]:port ({error})"
            self.connect_attempt(client, address, bool(event.get("success", True)))
        elif kind == "authorization-failure":
            self.authorization_failure(client, topic if isinstance(topic, str) else None)
        elif kind == "disconnect":
            self.disconnect(client)
        elif kind == "publish":
            size = event.get("bytes", 0)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                return "bytes must be a non-negative integer"
            assert isinstance(topic, str)  # checked above for publish and deliver
            self.message_sent(client, topic, size)
        else:
            assert isinstance(topic, str)
            self.message_received(client, topic)
        return None



class CloudMetricsService(CloudEventIntake):
    """Closes the windows: one datapoint per monitored device per window, stored and evaluated.

    ``owns`` narrows the devices to those this process evaluates (cluster mode: the things of the
    partitions a detect node owns); on one box it is every device.
    """

    def __init__(self, engine: Engine, monitoring: MonitoringIndex, store: BatchStore, window_s: float,
                 clock: Callable[[], float] = time.time, owns: Callable[[str], bool] | None = None,
                 minute_s: float = 60.0) -> None:
        super().__init__(window_s, clock, closes_windows=True, minute_s=minute_s)
        self._engine = engine
        self._monitoring = monitoring
        self._store = store
        self._owns = owns
        self._closing = threading.Lock()  # a window is closed, kept or resumed by one thread at a time

    # -- window closing (worker thread) ----------------------------------------------------------
    async def run(self) -> None:
        """Close each window shortly after its end, forever."""
        while True:
            window_s = self.aggregator.window_s
            now = self._clock()
            await asyncio.sleep(max(0.05, (self.aggregator.index(now) + 1) * window_s - now + min(0.2, window_s / 20)))
            try:
                await anyio.to_thread.run_sync(self.close_due)
            except Exception as error:
                log_unless_outage(log, "cloud_window_failed", error)

    def monitored(self, selection: PartitionSelection | None = None) -> set[str]:
        """The devices a window gives datapoints: every registered thing (an idle one gets its 0),
        or those of ``selection``'s partitions (a cluster's detect node), and every client seen.
        Read once per round of closing and handed to ``close_window``: at a 10M fleet the registry
        is 10M names, which each window and each of its calls read before (whole rows, in pages).
        With ``selection``, the partitions of things registered since are recorded first, a bounded
        number a round, so each node reads its share of the registry only."""
        if selection is not None:
            try:
                with writing(self._engine) as conn:
                    registry.record_partitions(conn, selection.partition_of, PARTITIONS_RECORDED_PER_ROUND)
            except sqlalchemy.exc.DBAPIError as error:
                # Only an optimisation: the things without one are read and picked by name below
                # (an outage fails that read as it would have).
                log_unless_outage(log, "registry_partitions_not_recorded", error)
        with self._engine.connect() as conn:
            monitored = registry.thing_names(conn, selection)
        self.aggregator.known = monitored  # the seen devices join it below: they are known too
        with self._events:  # (an event adds to them meanwhile)
            monitored |= self.aggregator.seen
        return monitored

    def close_due(self) -> int:
        """Turn every closed window into datapoints, store and evaluate them; returns devices done."""
        done = 0
        with self._closing:
            monitored: set[str] | None = None
            for window, clients in self.take_closed():
                monitored = self.monitored() if monitored is None else monitored
                done += self._close_recorded(window, clients, monitored)
        return done

    def _close_recorded(self, window: int, clients: dict[str, ClientWindow], monitored: set[str] | None = None) -> int:
        """Close a window of this process's own observation, its devices' connection changes kept
        first (store/disconnections.py: true whether or not the datapoints are stored then)."""
        changes = connection_changes(clients)
        if changes:
            with writing(self._engine) as conn:
                disconnections.apply(conn, changes, partition_of)
        return self.close_window(window, clients, monitored=monitored)

    # -- a graceful stop and the next start (worker thread) ---------------------------------------
    def suspend(self) -> int:
        """At a graceful stop, once the broker stopped (no event comes any more): keep every window
        not closed yet in the database for ``resume``; returns how many device windows were kept."""
        with self._closing:
            rows = [(window, thing, pack(part)) for window, clients in self.take_open().items()
                    for thing, part in clients.items()]
            with writing(self._engine) as conn:
                kept = open_windows.keep(conn, rows)
                open_windows.keep_open_window(conn, self.aggregator.index(self._clock()))
        log.info("cloud_windows_kept", devices=kept, windows=len({row[0] for row in rows}))
        return kept

    def resume(self) -> int:
        """At start, before the broker runs: take back the windows the last graceful stop kept. The
        window open now carries on; one that ended meanwhile is closed now, its datapoints at its
        own end (the window open at the stop too when no device had an event in it: every
        monitored device gets its 0). Returns how many device windows were taken back."""
        with self._closing:
            with writing(self._engine) as conn:
                rows = open_windows.take(conn)
                open_at = open_windows.take_open_window(conn)
                # The things registered now: before the first window closes, the refused CONNECTs
                # of one of them count although the cap on unknown names is reached (an outside-in
                # test: a registered thing got 0 authorization failures in the first window).
                self.aggregator.known = registry.thing_names(conn, None)
                # Who was away at the last window closed (the kept windows below say what changed
                # since); monitored, registered or not, as before the stop.
                away = disconnections.load(conn)
            self.aggregator.disconnected_at.update(away)
            self.aggregator.seen.update(away)
            current = self.aggregator.index(self._clock())
            ended: dict[int, dict[str, ClientWindow]] = {}
            # The window open at the stop carries on, or is closed now for every monitored device,
            # idle or not, as are those with kept events. Only if the stop was in this window or
            # the one before: a mark older than that may be one a release before this one left
            # behind (it neither writes nor deletes it) and whose windows it closed itself.
            graceful = open_at is not None and current - 1 <= open_at <= current
            if open_at == current - 1:
                ended[open_at] = {}
            for window, thing, data in rows:
                part = unpack(data)
                if window >= current:
                    self.aggregator.restore(window, thing, part)
                else:
                    ended.setdefault(window, {})[thing] = part
            for window in sorted(ended):
                for thing, part in ended[window].items():  # what they say of connections counts too
                    self.aggregator.restore(window, thing, part)
                try:
                    self._close_recorded(window, self.aggregator.take(window))
                except Exception:
                    # Kept again for the next start rather than lost (the database went away).
                    with writing(self._engine) as conn:
                        open_windows.keep(conn, [(w, t, pack(p)) for w, found in ended.items() if w >= window
                                                 for t, p in found.items()])
                        if open_at is not None:
                            open_windows.keep_open_window(conn, open_at)
                    raise
            if rows or graceful:
                # The window this start falls in is closed at its end for every monitored device,
                # idle or not, as it would have been without the stop (windows wholly inside the
                # stop were observed by nobody and get no datapoint).
                self.aggregator.last_closed = current - 1
        if rows or graceful:
            log.info("cloud_windows_resumed", devices=len(rows), closed_now=sorted(ended), open_at_stop=open_at)
        return len(rows)

    def close_window(self, window: int, clients: Mapping[str, Any], owns: Callable[[str], bool] | None = None,
                     seen_only: bool = False, monitored: set[str] | None = None) -> int:
        """One window's datapoints for every monitored device (``monitored``, read now if not
        given; ``owns``, if given, narrows them further: a cluster's detect node closes a window for
        some of its partitions at a time; ``seen_only``: for the devices in ``clients`` only, a
        window known to be incomplete), handed to the store in chunks of things in name order;
        returns devices stored."""
        end = (window + 1) * self.aggregator.window_s
        dimensions = self._monitoring.dimensions()
        items: list[tuple[str, dict[str, dict[str, Any]], float, None]] = []
        candidates = self.monitored() if monitored is None else monitored
        if seen_only:
            candidates = candidates & clients.keys()
        owns = owns if owns is not None else self._owns
        things = sorted(candidates if owns is None else (thing for thing in candidates if owns(thing)))
        # Their registry facts in a few statements: one by one, the devices the monitoring cache
        # has not seen since the last change of the control plane (any CreateThing, say) cost a
        # connection and two queries each, ~270 us a device even on SQLite in process.
        self._monitoring.prime(things)
        for thing in things:
            profiles = self._monitoring.profiles_for(thing)
            retained = self._monitoring.retained_metrics(thing)
            uses_cloud = any(b.get("metric") in CLOUD_METRICS for p in profiles for b in p.get("behaviors") or [])
            if not uses_cloud and not any(is_cloud_side(s) for s in retained):
                continue
            points = self.aggregator.datapoints(thing, clients.get(thing), end, dimension_specs(profiles, dimensions))
            items.append((thing, points, end, None))  # the store keeps the retained series of it
        stored = 0
        # In transactions of at most BATCH_MAX devices: the whole fleet's window in one would hold
        # the detection worker for seconds at fleet size, and every device report behind it.
        for start in range(0, len(items), BATCH_MAX):
            chunk = items[start:start + BATCH_MAX]
            # One device's window that the store cannot take must not cost the others theirs.
            outcome = store_isolating(self._store.store_batch, chunk, source="cloud")
            for index, error in outcome.failed.items():
                log.error("cloud_window_not_stored", thing=chunk[index][0], error=f"{type(error).__name__}: {error}")
            if outcome.outage is not None:
                raise outcome.outage
            stored += len(outcome.stored)
        return stored
