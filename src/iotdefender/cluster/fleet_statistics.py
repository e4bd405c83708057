"""Fleet-wide statistical thresholds in cluster mode: every detect node's window values, shared.

A ``statisticalThreshold`` behavior's threshold is a percentile of the previous window's latest
value of every device the profile monitors (engine/statistics.py). In a cluster each detect node
holds its own partitions' devices, so each node publishes, once a window of a series has ended,
its devices' values of that window to the NATS KV bucket ``iotdefender_stats`` (key
``s.<series digest>.<window>.<node>``), and watches the bucket: ``others`` gives the engine the
other nodes' values, and the engine recomputes the threshold whenever more arrive (a version).

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
``generation``: a receiver keeps the latest publish's parts only. A node of the release before
reads a one-part entry as before (it ignores the new fields) and parts as the node's whole values
(it keeps the last part it read), where it got nothing before.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import anyio.to_thread
import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

from iotdefender.cancellation import cancel_and_wait
from iotdefender.engine.statistics import SeriesKey
from iotdefender.message_size import fitting, payload_limit

log = structlog.get_logger("iotdefender.cluster")

BUCKET = "iotdefender_stats"
TTL_S = 7200.0  # the longest statistical window AWS allows is far shorter; entries only need one window


#: A KV entry's encoded values at most on a server of NATS' default ``max_payload`` (1 MB); a node
#: passes ``message_size.payload_limit`` of its server's.
VALUES_MAX_BYTES = payload_limit(1024 * 1024)


class WindowValues(msgspec.Struct, frozen=True, omit_defaults=True):
    profile: str
    behavior: str
    window: int
    node: str
    values: dict[str, float]
    #: This entry's part of the node's values of the window, and how many parts there are
    #: (absent when one entry holds them all, as the release before wrote them).
    part: int = 0
    parts: int = 1
    #: Which publish of the node's window the part belongs to (the publisher's clock in ns; 0 from
    #: the release before): a receiver keeps the parts of the latest publish only, so a republish
    #: whose later parts were not delivered is never mixed with an earlier publish's.
    generation: int = 0


class _Published(NamedTuple):
    """What one node published of one window, as far as it has arrived. Replaced, never changed
    in place: the detection thread reads it while the event loop receives."""

    generation: int
    parts: dict[int, dict[str, float]]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(WindowValues)


def _digest(key: SeriesKey) -> str:
    return hashlib.sha1(f"{key[0]}\0{key[1]}".encode()).hexdigest()[:20]


def _token(node: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", node)


class KvSharedWindows:
    """The engine's ``SharedWindows`` over a NATS KV bucket, and this node's publisher to it."""

    def __init__(self, node: str, max_bytes: int = VALUES_MAX_BYTES) -> None:
        self._node = node
        self._max_bytes = max_bytes
        # (series, window) -> node -> its parts; and a version per (series, window) for the engine.
        self._values: dict[tuple[SeriesKey, int], dict[str, _Published]] = {}
        self._versions: dict[tuple[SeriesKey, int], int] = {}
        self._kv: object | None = None
        self._watcher: object | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the engine's side (detection thread) ------------------------------------------------------
    def others(self, key: SeriesKey, window: int) -> tuple[int, dict[str, float]]:
        # The version first: values that arrive while these are merged move it past the one
        # returned, so the engine merges again. Read after, it could name values not merged, and
        # the engine would keep a threshold short of them for the window.
        version = self._versions.get((key, window), 0)
        by_node = self._values.get((key, window))
        if not by_node:
            return version, {}
        merged: dict[str, float] = {}
        for node, published in list(by_node.items()):
            if node != self._node:
                for values in list(published.parts.values()):
                    merged.update(values)
        return version, merged

    def version(self, key: SeriesKey, window: int) -> int:
        return self._versions.get((key, window), 0)

    def received(self, message: WindowValues) -> None:
        """Another node's (or this node's, ignored by ``others``) values of one window."""
        slot = ((message.profile, message.behavior), message.window)
        by_node = self._values.setdefault(slot, {})
        held = by_node.get(message.node)
        if held is not None and message.generation and held.generation > message.generation:
            return  # a part of an earlier publish, after the later one's
        parts: dict[int, dict[str, float]] = {}
        if held is not None and message.generation and held.generation == message.generation:
            parts = {part: values for part, values in held.parts.items() if part < message.parts}
        parts[message.part] = message.values
        by_node[message.node] = _Published(message.generation, parts)
        self._versions[slot] = self._versions.get(slot, 0) + 1
        newest = message.window
        for old in [s for s in self._values if s[0] == slot[0] and s[1] < newest - 2]:
            self._values.pop(old, None)
            self._versions.pop(old, None)

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

        def encoded(chunk: Sequence[tuple[str, float]], part: int = 0, parts: int = 1) -> bytes:
            return _encoder.encode(WindowValues(key[0], key[1], window, self._node, dict(chunk), part, parts,
                                                generation))

        chunks = [chunk for chunk, _ in fitting(list(values.items()), encoded, self._max_bytes)]
        entry = f"s.{_digest(key)}.{window}.{_token(self._node)}"
        for part, chunk in enumerate(chunks):  # encoded again: each part says how many there are
            await self._kv.put(entry if part == 0 else f"{entry}.{part}",  # type: ignore[attr-defined]
                               encoded(chunk, part, len(chunks)))

    async def run(self, ended_windows: Callable[[float], list[tuple[SeriesKey, int, dict[str, float]]]],
                  period_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        """Hand this node's ended windows (``DetectionService.ended_statistics``) to the others,
        every ``period_s``, forever."""
        while True:
            await asyncio.sleep(period_s)
            ended = await anyio.to_thread.run_sync(ended_windows, clock())
            for key, window, values in ended:
                try:
                    await self.publish(key, window, values)
                except (nats.errors.Error, OSError, TimeoutError) as error:
                    log.warning("fleet_statistics_unpublished", profile=key[0], behavior=key[1], window=window,
                                error=repr(error))

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        if self._watcher is not None:
            try:
                await self._watcher.stop()  # type: ignore[attr-defined]
            except nats.errors.Error:
                pass
