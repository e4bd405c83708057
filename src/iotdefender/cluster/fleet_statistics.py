"""Fleet-wide statistical thresholds in cluster mode: every detect node's window values, shared.

A ``statisticalThreshold`` behavior's threshold is a percentile of the previous window's latest
value of every device the profile monitors (engine/statistics.py). In a cluster each detect node
holds its own partitions' devices, so each node publishes, once a window of a series has ended,
its devices' values of that window to the NATS KV bucket ``iotdefender_stats`` (key
``s.<series digest>.<window>.<node>``), and watches the bucket: ``population`` gives the engine
every device's value of a window, and the engine recomputes the threshold whenever another node's
values arrive whole (a version).

Exact, not approximated: the union of the nodes' values is the one box's population (a device is
in one partition), so once every node has published, every node computes the single box's
percentile. Until then (the first moments of a window: a node publishes within ``period_s`` of
the window's end, on a timer) a node's threshold is over the values it has; a device evaluated in
that interval is judged against it. The price is one value per device per window on the wire.
A device that moved between nodes within a window may be in two nodes' values: one is kept.

A node's values of one window go in one KV entry while they fit in a NATS message (the server's
``max_payload``, 1 MB by default: about 40,000 devices), in several parts
beyond (``part`` of ``parts``; part 0 at the one entry's key, the others at ``.<part>`` after it).
Before the parts, a node of a 10M fleet's sizing (300,000-450,000 devices) could not publish at
all, so every other node's threshold left its devices out. Each part carries its publish's
``generation``: a receiver counts a node's latest publish whose parts all arrived, never a mix of
two publishes. A node of the release before
reads a one-part entry as before (it ignores the new fields) and parts as the node's whole values
(it keeps the last part it read), where it got nothing before.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import NamedTuple

import anyio.to_thread
import msgspec
import nats.errors
import nats.js.errors
import numpy as np
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

from iotdefender.cancellation import cancel_and_wait
from iotdefender.engine.sorted_runs import SortedRuns
from iotdefender.engine.statistics import SeriesKey
from iotdefender.message_size import fitting, payload_limit

log = structlog.get_logger("iotdefender.cluster")

BUCKET = "iotdefender_stats"
TTL_S = 7200.0  # the longest statistical window AWS allows is far shorter; entries only need one window


#: A KV entry's encoded values at most on a server of NATS' default ``max_payload`` (1 MB); a node
#: passes ``message_size.payload_limit`` of its server's.
VALUES_MAX_BYTES = payload_limit(1024 * 1024)


#: What a node announces when it reads ``WindowValues`` in the compact form (``names`` and
#: ``packed``): a node publishes them so only once every live node does.
COMPACT_ANNOUNCEMENT = "fleet-statistics-compact"
COMPACT_VERSION = 1


def announcement() -> dict[str, int]:
    return {COMPACT_ANNOUNCEMENT: COMPACT_VERSION}


def compact_readable(announced: Sequence[object]) -> bool:
    """Whether every other live node (their announcements as read) reads the compact form."""
    return all(value == COMPACT_VERSION for value in announced)


class WindowValues(msgspec.Struct, frozen=True, omit_defaults=True):
    profile: str
    behavior: str
    window: int
    node: str
    #: Each device's value; absent in the compact form (a node of the release before cannot read
    #: that form, and fails to decode it rather than take it for no values).
    values: dict[str, float] = {}
    #: This entry's part of the node's values of the window, and how many parts there are
    #: (absent when one entry holds them all, as the release before wrote them).
    part: int = 0
    parts: int = 1
    #: Which publish of the node's window the part belongs to (the publisher's clock in ns; 0 from
    #: the release before): a receiver keeps the parts of the latest publish only, so a republish
    #: whose later parts were not delivered is never mixed with an earlier publish's.
    generation: int = 0
    #: The partitions of the publish's devices (every part says all of them; absent from the
    #: release before, and when the publish holds none): a device is in two nodes' values only if
    #: both owned its partition in the window, so a receiver looks for such devices only between
    #: publishes that share a partition (``_Merged``).
    partitions: list[int] = []
    #: The compact form: the devices' names joined by newlines (no thing name holds one) and their
    #: values as little-endian float64s, in the same order. A map of name -> value was ~24 bytes a
    #: device to decode into Python objects on every receiver's event loop: 2.7 s a window and
    #: series at a 10M fleet (bench/README.md); the values are read as they are and the names
    #: split only where a moved device is looked for (``_Merged``).
    names: str = ""
    packed: bytes = b""

    def count(self) -> int:
        """The devices of the part (either form)."""
        return len(self.values) if self.values else (self.names.count("\n") + 1 if self.names else 0)

    def well_formed(self) -> bool:
        """A compact part's values are 8 bytes per name, and a part holds one form."""
        if self.values:
            return not self.names and not self.packed
        return len(self.packed) == 8 * self.count()


class _Arriving(NamedTuple):
    """The parts of one node's publish of one window received so far, while some are missing.
    Replaced, never changed in place: the detection thread reads while the event loop receives."""

    generation: int
    parts: dict[int, WindowValues]


class _Complete:
    """One node's whole publish of one window: its devices' values, and their names in the same
    order (split from the compact form the first time they are asked for). Never changed once
    built but for that split, which gives the same list whichever thread makes it."""

    def __init__(self, generation: int, parts: Sequence[WindowValues], partitions: frozenset[int] | None = None
                 ) -> None:
        self.generation = generation
        self.partitions = partitions  # None: not known (a node of the release before)
        arrays = [np.frombuffer(part.packed, dtype="<f8") if not part.values else
                  np.fromiter(part.values.values(), dtype=float, count=len(part.values)) for part in parts]
        self.values = np.concatenate(arrays).astype(float, copy=False) if arrays else np.empty(0)
        self._sources: list[dict[str, float] | str] = [part.values or part.names for part in parts]
        self._names: list[str] | None = None

    @property
    def names(self) -> list[str]:
        names = self._names
        if names is None:
            names = self._names = [name for source in self._sources
                                   for name in (source if isinstance(source, dict) else
                                                source.split("\n") if source else ())]
        return names


class _Partitions:
    """The partitions of sets of devices, each device's computed once (a blake2b each: 0.2 s for a
    10M fleet's share of a node, on every window of every series otherwise). Kept while the devices
    asked about stay within four times the largest set asked about (an empty or a small series
    clears nothing); read and written by the event loop and the detection thread, one item at a
    time (no iteration: the GIL makes each step whole)."""

    def __init__(self, partition_of: Callable[[str], int]) -> None:
        self._partition_of = partition_of
        self._known: dict[str, int] = {}
        self._largest = 0

    def of(self, names: Collection[str]) -> frozenset[int]:
        known, partition_of = self._known, self._partition_of
        self._largest = max(self._largest, len(names))
        if len(known) > 4 * self._largest + 100_000:
            known.clear()
        found = set()
        for name in names:
            partition = known.get(name)
            if partition is None:
                partition = known[name] = partition_of(name)
            found.add(partition)
        return frozenset(found)


def _shared(first: frozenset[int] | None, second: frozenset[int] | None) -> bool:
    """Whether two sets of devices may hold a device in common, from their partitions."""
    return first is None or second is None or not first.isdisjoint(second)


class _Window:
    """Every node's publishes of one series' window, as received (event loop) and read (detection thread).

    ``version`` moves once per node's *complete* publish, not per part: the engine computes the
    percentile again at each move, over the whole fleet, so a move per part (a node of a 10M
    fleet's sizing publishes ~8 parts, 30 such nodes ~250) cost quadratic time in the parts.
    """

    def __init__(self) -> None:
        self.complete: dict[str, _Complete] = {}  # replaced on change (copy on write), never mutated
        self.arriving: dict[str, _Arriving] = {}
        self.version = 0  # from one counter for all windows: a window dropped and received again never repeats one
        self.received_at = 0.0  # monotonic


class _Merged:
    """The other nodes' complete publishes of one window as one population, grown as they arrive.

    Built and read by the detection thread only. Adding a node's publish costs that publish, not the
    fleet: at 10M devices the engine merged every node's dictionary into a new one at each version
    (seconds each, under the detection lock). A device in two nodes' values (it moved within the
    window) counts once: the later added wins, as when ``KvSharedWindows.others`` merges in order.

    Such a device is looked for only between publishes that share a partition (``WindowValues.
    partitions``; a publish of the release before shares with every other), and among this node's
    own devices only in publishes that share one of theirs: an index of every device, kept up as
    each publish arrived, was most of the detection thread's cost at a 10M fleet (bench/README.md).
    Each publish's values are kept sorted (``runs``), sorted again only when one of its devices is
    found in a later publish or among this node's own: the engine's percentile is taken from the
    sorted runs (engine/sorted_runs.py) instead of ``np.percentile`` over the whole population at
    every arrival.
    """

    def __init__(self, partitions: _Partitions | None = None) -> None:
        self.included: dict[str, _Complete] = {}  # node -> the publish added (a publish received again is another)
        self._partitions = partitions
        self._added: list[_Complete] = []  # in the order added
        self._positions: list[dict[str, int] | None] = []  # each publish's device -> offset, once asked
        self._dead: list[list[int]] = []  # each publish's offsets of values a later node's replaced
        self._sorted: list[np.ndarray | None] = []  # each publish's values that count, sorted (None: to sort)
        # This node's own devices (the engine's closed window, never changed): which ``own``, its
        # partitions, how many publishes were looked through for them, the offsets found in each,
        # its values sorted.
        self._own: Mapping[str, float] | None = None
        self._own_partitions: frozenset[int] | None = None
        self._own_seen = 0
        self._own_found: list[list[int]] = []
        self._own_sorted = np.empty(0)

    def add(self, node: str, published: _Complete) -> None:
        for chunk, earlier in enumerate(self._added):
            if _shared(earlier.partitions, published.partitions):
                positions = self._offsets(chunk)
                moved = positions.keys() & published.names  # devices that moved from that node: where they were
                if moved:
                    self._dead[chunk].extend(positions[name] for name in moved)
                    self._sorted[chunk] = None
        self._added.append(published)
        self._positions.append(None)
        self._dead.append([])
        self._sorted.append(None)
        self._own_found.append([])
        self.included[node] = published

    def _offsets(self, chunk: int) -> dict[str, int]:
        positions = self._positions[chunk]
        if positions is None:
            positions = self._positions[chunk] = dict(zip(self._added[chunk].names, itertools.count()))
        return positions

    def runs(self, own: Mapping[str, float]) -> list[np.ndarray]:
        """Sorted runs of ``own``'s values and of the other nodes' devices not in it (this node's
        own values win). Each publish is looked through for ``own`` once, if it shares a partition."""
        if own is not self._own:
            for chunk, found in enumerate(self._own_found):
                if found:
                    self._sorted[chunk] = None
            self._own, self._own_seen = own, 0
            self._own_found = [[] for _ in self._added]
            self._own_sorted = np.sort(np.fromiter(own.values(), dtype=float, count=len(own)))
            self._own_partitions = None if self._partitions is None else self._partitions.of(own.keys())
        for chunk in range(self._own_seen, len(self._added)):
            published = self._added[chunk]
            if _shared(published.partitions, self._own_partitions) and not own.keys().isdisjoint(published.names):
                self._own_found[chunk] = [offset for offset, name in enumerate(published.names) if name in own]
                self._sorted[chunk] = None
        self._own_seen = len(self._added)
        runs = [self._own_sorted]
        for chunk, run in enumerate(self._sorted):
            if run is None:
                values = self._added[chunk].values
                excluded = self._dead[chunk] + self._own_found[chunk]
                if excluded:
                    keep = np.ones(len(values), dtype=bool)
                    keep[excluded] = False
                    values = values[keep]
                run = self._sorted[chunk] = np.sort(values)
            runs.append(run)
        return runs


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(WindowValues)


def _digest(key: SeriesKey) -> str:
    return hashlib.sha1(f"{key[0]}\0{key[1]}".encode()).hexdigest()[:20]


def _token(node: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", node)


def _compact_chunks(items: list[tuple[str, float]], overhead: int, max_bytes: int
                   ) -> list[list[tuple[str, float]]]:
    """``items`` cut in runs whose compact encoding fits ``max_bytes``: a device costs its name's
    UTF-8 bytes, a newline and 8 bytes, beyond ``overhead`` (the encoding of no device, the part
    numbers at their largest) and the string's and bytes' headers (5 bytes each at most). One
    pass, where ``fitting`` encodes the whole set again at each halving."""
    budget = max(1, max_bytes - overhead - 10)
    chunks: list[list[tuple[str, float]]] = []
    chunk: list[tuple[str, float]] = []
    size = 0
    for item in items:
        cost = len(item[0].encode()) + 9
        if chunk and size + cost > budget:
            chunks.append(chunk)
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    chunks.append(chunk)
    return chunks


class KvSharedWindows:
    """The engine's ``SharedWindows`` over a NATS KV bucket, and this node's publisher to it."""

    def __init__(self, node: str, max_bytes: int = VALUES_MAX_BYTES,
                 partition_of: Callable[[str], int] | None = None,
                 compact: Callable[[], bool] = lambda: False) -> None:
        """``partition_of``: the cluster's partition of a device, named in each publish and used
        to look for moved devices only where they can be (``_Merged``); None: not named, looked
        for everywhere. ``compact``: whether every other live node reads the compact form
        (``compact_readable`` of their announcements); publishes use it only then."""
        self._node = node
        self._max_bytes = max_bytes
        self._compact = compact
        self._partitions = None if partition_of is None else _Partitions(partition_of)
        self._windows: dict[tuple[SeriesKey, int], _Window] = {}  # changed by the event loop
        self._merged: dict[tuple[SeriesKey, int], _Merged] = {}  # the detection thread's
        self._versions = itertools.count(1)
        # This node's keys in the bucket, per series and window, to delete what no one reads any more.
        self._mine: dict[SeriesKey, dict[int, list[str]]] = {}
        self._kv: object | None = None
        self._watcher: object | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the engine's side (detection thread) ------------------------------------------------------
    def population(self, key: SeriesKey, window: int, own: Mapping[str, float]) -> tuple[int, SortedRuns]:
        """(version, the values of every device of the window: ``own``, and the other nodes' devices
        not in it). Merging costs the publishes that arrived whole since the last call (all of them
        again after a node published the window anew)."""
        slot = (key, window)
        found = self._windows.get(slot)
        # The version first: a publish completed while these are merged moves it past the one
        # returned, so the engine merges again. Read after, it could name values not merged, and
        # the engine would keep a threshold short of them for the window.
        version = found.version if found is not None else 0
        complete = found.complete if found is not None else {}
        others = {node: published for node, published in complete.items() if node != self._node}
        merged = self._merged.get(slot)
        if merged is None or any(others.get(node) is not published for node, published in merged.included.items()):
            merged = _Merged(self._partitions)  # a node published the window again: its earlier values go
        for node, published in others.items():
            if node not in merged.included:
                merged.add(node, published)
        self._merged[slot] = merged
        for old in [s for s in self._merged if s != slot and ((s[0] == key and s[1] < window) or s not in self._windows)]:
            del self._merged[old]  # the engine asks for the window before its current one only
        return version, SortedRuns(merged.runs(own))

    def others(self, key: SeriesKey, window: int) -> tuple[int, dict[str, float]]:
        """(version, the other nodes' values of the window by device): what ``population`` counts
        besides this node's own devices, for reading and tests."""
        found = self._windows.get((key, window))
        if found is None:
            return 0, {}
        version, complete = found.version, found.complete  # the version first, as in ``population``
        merged: dict[str, float] = {}
        for node, published in complete.items():
            if node != self._node:
                merged.update(zip(published.names, published.values.tolist()))
        return version, merged

    def version(self, key: SeriesKey, window: int) -> int:
        found = self._windows.get((key, window))
        return found.version if found is not None else 0

    def received(self, message: WindowValues, now: float | None = None) -> None:
        """A part of another node's values of one window (this node's own, read back, are skipped:
        the engine has them)."""
        if message.node == self._node:
            return
        if not message.well_formed():
            log.error("fleet_statistics_malformed", node=message.node, window=message.window, part=message.part)
            return
        now = time.monotonic() if now is None else now
        slot = ((message.profile, message.behavior), message.window)
        window = self._windows.setdefault(slot, _Window())
        window.received_at = now
        generation = message.generation
        whole, arriving = window.complete.get(message.node), window.arriving.get(message.node)
        if generation and ((whole is not None and whole.generation >= generation)
                           or (arriving is not None and arriving.generation > generation)):
            return  # a part of an earlier publish (or one received already), after the later one's
        parts: dict[int, WindowValues] = {}
        if arriving is not None and generation and arriving.generation == generation:
            parts = dict(arriving.parts)
        parts[message.part] = message
        if all(part in parts for part in range(message.parts)):
            whole_parts = [parts[part] for part in range(message.parts)]
            # Not known when a part with devices names none (the release before).
            partitions = (None if any(part.count() and not part.partitions for part in whole_parts)
                          else frozenset(partition for part in whole_parts for partition in part.partitions))
            # In the order the publishes became whole, which is the order they are merged in.
            complete = {node: held for node, held in window.complete.items() if node != message.node}
            complete[message.node] = _Complete(generation, whole_parts, partitions)
            window.complete = complete
            window.arriving = {node: held for node, held in window.arriving.items() if node != message.node}
            window.version = next(self._versions)
        else:
            window.arriving = {**window.arriving, message.node: _Arriving(generation, parts)}
        newest = message.window
        for old in [s for s, held in self._windows.items()
                    if (s[0] == slot[0] and s[1] < newest - 2) or now - held.received_at > TTL_S]:
            self._windows.pop(old, None)  # windows read no more, and series no longer published (a deleted behavior)

    # -- NATS -------------------------------------------------------------------------------------
    async def start(self, js: JetStreamContext, replicas: int) -> None:
        try:
            self._kv = await js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            try:
                self._kv = await js.create_key_value(KeyValueConfig(bucket=BUCKET, history=1, ttl=TTL_S,
                                                                    replicas=replicas, storage=StorageType.FILE))
            except nats.js.errors.APIError:  # another node created it meanwhile
                self._kv = await js.key_value(BUCKET)
        self._watcher = await self._kv.watchall(ignore_deletes=True)  # type: ignore[attr-defined]
        self._task = asyncio.create_task(self._watch(), name="fleet-statistics-watch")

    async def _watch(self) -> None:
        assert self._watcher is not None
        while True:
            try:
                entry = await self._watcher.updates(timeout=5)  # type: ignore[attr-defined]
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            if entry is None or not entry.value:  # the end of the initial values
                continue
            try:
                self.received(_decoder.decode(entry.value))
            except msgspec.DecodeError as error:
                log.error("fleet_statistics_undecodable", key=entry.key, error=str(error))

    async def publish(self, key: SeriesKey, window: int, values: dict[str, float]) -> None:
        """This node's values of one window: one entry, or several parts when they do not fit."""
        assert self._kv is not None
        generation = time.time_ns()
        partitions = [] if self._partitions is None else sorted(self._partitions.of(values.keys()))

        def as_map(chunk: Sequence[tuple[str, float]], part: int = 0, parts: int = 1) -> bytes:
            return _encoder.encode(WindowValues(key[0], key[1], window, self._node, dict(chunk), part, parts,
                                                generation, partitions))

        def as_compact(chunk: Sequence[tuple[str, float]], part: int = 0, parts: int = 1) -> bytes:
            return _encoder.encode(WindowValues(
                key[0], key[1], window, self._node, part=part, parts=parts, generation=generation,
                partitions=partitions, names="\n".join(name for name, _ in chunk),
                packed=np.fromiter((value for _, value in chunk), dtype="<f8", count=len(chunk)).tobytes()))

        compact = self._compact()
        encoded = as_compact if compact else as_map
        chunks: Sequence[Sequence[tuple[str, float]]] = (
            _compact_chunks(list(values.items()), len(as_compact([], 1 << 31, 1 << 31)), self._max_bytes) if compact
            else [chunk for chunk, _ in fitting(list(values.items()), as_map, self._max_bytes)])
        entry = f"s.{_digest(key)}.{window}.{_token(self._node)}"
        keys = [entry if part == 0 else f"{entry}.{part}" for part in range(len(chunks))]
        stale = self._superseded(key, window, keys)
        for part, (entry_key, chunk) in enumerate(zip(keys, chunks)):  # encoded again: each part says how many
            await self._kv.put(entry_key, encoded(chunk, part, len(chunks)))  # type: ignore[attr-defined]
        for old in stale:
            try:
                await self._kv.delete(old)  # type: ignore[attr-defined]
            except (nats.errors.Error, OSError, TimeoutError) as error:
                log.warning("fleet_statistics_not_deleted", key=old, error=repr(error))

    def _superseded(self, key: SeriesKey, window: int, keys: list[str]) -> list[str]:
        """This node's entries no one reads once ``keys`` (window ``window``) are put: its windows
        before the one before (a threshold is the previous window's percentile) and the parts of an
        earlier publish of ``window`` beyond this one's; ``keys`` are recorded first, so a publish
        cut short is deleted in turn. Left to the bucket's TTL (2 h), a 5-minute series kept 24
        windows of every node's values: at 10M devices several GB a series, which every node that
        starts reads through its watch. What a failed delete or a restart leaves, the TTL removes."""
        mine = self._mine.setdefault(key, {})
        stale = [old for earlier, held in mine.items() if earlier < window - 1 for old in held]
        stale += [old for old in mine.get(window, []) if old not in keys]
        self._mine[key] = {earlier: held for earlier, held in mine.items() if earlier >= window - 1}
        self._mine[key][window] = keys
        return stale

    async def run(self, ended_windows: Callable[[float], list[tuple[SeriesKey, int, dict[str, float]]]],
                  period_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        """Hand this node's ended windows (``DetectionService.ended_statistics``) to the others,
        every ``period_s``, forever."""
        failed: dict[SeriesKey, tuple[int, dict[str, float]]] = {}  # a series' latest window not published
        while True:
            await asyncio.sleep(period_s)
            ended = await anyio.to_thread.run_sync(ended_windows, clock())
            for key, window, values in ended:
                if key not in failed or failed[key][0] <= window:
                    failed[key] = (window, values)  # a later window's values replace an earlier one's
            for key, (window, values) in list(failed.items()):
                try:
                    await self.publish(key, window, values)
                    del failed[key]
                except (nats.errors.Error, OSError, TimeoutError) as error:
                    # Tried again next period: a node's values count only once its publish is whole,
                    # so a publish cut short would leave all of them out of every other node's threshold.
                    log.warning("fleet_statistics_unpublished", profile=key[0], behavior=key[1], window=window,
                                error=repr(error))

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        if self._watcher is not None:
            try:
                await self._watcher.stop()  # type: ignore[attr-defined]
            except nats.errors.Error:
                pass
