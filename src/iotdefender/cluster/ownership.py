"""Which detect node owns which partition: leases in a NATS key-value bucket, compare-and-set + TTL.

nats-py 2.16 (the newest release) has no client support for consumer priority groups or pinned
clients (ADR-42, server 2.11+): nothing in ``nats.js`` sends a pull request's ``group``/``id`` or
reads ``Nats-Pin-Id``. So ownership uses what nats-py does support, the key-value bucket:

- membership: each node ``put``s ``iotdefender-members/<node>`` every tick; the bucket's max age
  (``Topology.lease_ttl_s``) removes the entry of a node that stopped (kill -9, partitioned away);
- assignment: every node computes the same owner for every partition from the live member list
  (rendezvous hashing, partitions.py), with no messages exchanged;
- leases: a node takes ``iotdefender-leases/p.<n>`` with ``create`` (succeeds only if absent),
  renews it with ``update(last=revision)`` (compare-and-set: fails if anyone else wrote it), and
  gives it up with ``delete(last=revision)`` after its reader stopped and acked. The bucket's max
  age expires a lease that is not renewed, so a dead node's partitions are free after the TTL.

Safety (two nodes never both believe they own a partition): a node counts its lease valid only
until ``time sent + TTL - margin`` of its last successful renewal, measured on its own monotonic
clock from *before* the request left; the server keeps the entry until ``time stored + TTL``, which
is later. So the old owner stops before anyone else can ``create`` the key. Clocks that run at
wildly different rates or a process paused between check and commit could still break this, which
is why the acquisition revision is also a fencing token checked in the commit (fencing.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from iotdefender.cluster.partitions import assignment
from iotdefender.cluster.topology import Topology

log = structlog.get_logger("iotdefender.cluster")

#: Called when this node gains a partition (partition, fencing token) and when it must stop one.
Acquired = Callable[[int, int], Awaitable[None]]
Released = Callable[[int], Awaitable[None]]


@dataclass
class Lease:
    token: int  # the revision of the create that acquired it: the fencing token for the tenure
    revision: int  # the latest revision (each renewal writes a new one)
    valid_until: float  # local monotonic time after which this node must consider it lost


def lease_key(partition: int) -> str:
    return f"p.{partition:04d}"


class Ownership:
    """Keeps this node's share of the partitions, calling ``acquired``/``released`` as it changes."""

    def __init__(self, js: JetStreamContext, topology: Topology, node_id: str, acquired: Acquired,
                 released: Released, clock: Callable[[], float] = time.monotonic,
                 tick_s: float | None = None, safety_margin_s: float = 0.5) -> None:
        self._js, self._topology, self.node_id = js, topology, node_id
        self._acquired, self._released, self._clock = acquired, released, clock
        self._tick_s = tick_s if tick_s is not None else topology.lease_ttl_s / 5
        self._margin_s = safety_margin_s
        self._leases: dict[int, Lease] = {}
        self._members_kv: KeyValue | None = None
        self._leases_kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # One lock per lease key: a renewal and a release of the same lease never cross.
        self._locks: dict[int, asyncio.Lock] = {}
        self._leaving = False
        self.members: list[str] = []
        self.rebalances = 0

    def owned(self) -> dict[int, int]:
        """{partition: fencing token} of the leases this node holds and still counts valid."""
        now = self._clock()
        return {p: lease.token for p, lease in self._leases.items() if lease.valid_until > now}

    def holds(self, partition: int, token: int) -> bool:
        """Whether this node may still commit for ``partition`` under ``token``."""
        lease = self._leases.get(partition)
        return lease is not None and lease.token == token and lease.valid_until > self._clock()

    async def start(self) -> None:
        self._members_kv = await self._js.key_value(self._topology.members_bucket)
        self._leases_kv = await self._js.key_value(self._topology.leases_bucket)
        await self._keepalive()
        # Two loops: renewals never wait behind a slow acquisition or a reader finishing its batch
        # (not even the first round, which may start many readers).
        keepalive = asyncio.create_task(self._every(self._keepalive), name="ownership-keepalive")
        await self.rebalance()
        self._tasks = [asyncio.create_task(self._every(self.rebalance), name="ownership-rebalance"), keepalive]

    async def stop(self) -> None:
        """Leave cleanly: leave the membership, hand every partition over, then stop renewing.

        Renewals go on while the readers finish their batches, so no lease runs out mid-handover.
        """
        self._leaving = True
        tasks: list[asyncio.Task[None] | None] = [*self._tasks] if self._tasks else [None, None]
        rebalancing, keepalive = tasks
        if rebalancing is not None:
            rebalancing.cancel()
            await asyncio.gather(rebalancing, return_exceptions=True)
        if self._members_kv is not None:
            try:
                await self._members_kv.delete(self.node_id)
            except nats.errors.Error:
                pass
        await asyncio.gather(*(self._release(p) for p in sorted(self._leases)))
        if keepalive is not None:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)
        self._tasks = []

    async def _every(self, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            try:
                await step()
            except (nats.errors.Error, asyncio.TimeoutError) as err:
                # NATS unreachable: leases run out on the local clock (``holds`` turns false, the
                # readers stop committing) and the other nodes take the partitions over.
                log.warning("cluster.step_failed", node=self.node_id, step=step.__name__, error=repr(err))
            except Exception:  # a loop that dies would silently stop renewing or rebalancing
                log.exception("cluster.step_failed", node=self.node_id, step=step.__name__)

    async def _keepalive(self) -> None:
        """Heartbeat the membership and renew every lease (compare-and-set on its last revision)."""
        assert self._members_kv is not None
        if not self._leaving:
            await self._members_kv.put(self.node_id, b"")
        for partition, lease in list(self._leases.items()):
            try:
                await self._renew(partition, lease)
            except (nats.errors.Error, asyncio.TimeoutError) as err:  # the others are still worth renewing
                log.warning("cluster.renew_failed", node=self.node_id, partition=partition, error=repr(err))

    async def _renew(self, partition: int, lease: Lease) -> None:
        assert self._leases_kv is not None
        key, me = lease_key(partition), self.node_id.encode()
        async with self._lock(partition):
            if self._leases.get(partition) is not lease or lease.valid_until <= self._clock():
                return  # released meanwhile, or already counted lost: never resurrect it
            sent = self._clock()
            try:
                lease.revision = await self._leases_kv.update(key, me, last=lease.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    entry = await self._leases_kv.get(key)
                except nats.js.errors.NotFoundError:  # expired (or deleted) on the server
                    entry = None
                if entry is None or entry.value != me or (entry.revision or 0) < lease.revision:
                    # Someone else wrote the key: the lease expired on the server and was taken.
                    log.warning("cluster.lease_lost", node=self.node_id, partition=partition)
                    lease.valid_until = 0.0
                    return
                # Our own earlier renewal was stored but its reply was lost: no one else writes our
                # id, so the key is still ours; renew from that revision (validity counts from now).
                sent = self._clock()
                lease.revision = await self._leases_kv.update(key, me, last=entry.revision)
            lease.valid_until = sent + self._topology.lease_ttl_s - self._margin_s

    async def rebalance(self) -> None:
        """Drop leases that ran out, then move towards this node's share of the live members."""
        assert self._members_kv is not None
        now = self._clock()
        for partition in [p for p, lease in self._leases.items() if lease.valid_until <= now]:
            del self._leases[partition]
            self.rebalances += 1
            log.warning("cluster.partition_expired", node=self.node_id, partition=partition)
            await self._released(partition)
        try:
            self.members = sorted(await self._members_kv.keys())
        except nats.js.errors.NoKeysError:
            self.members = []
        share = assignment(self.members, self._topology.partitions).get(self.node_id, set())
        # Concurrently: a release waits for its reader's batch, an acquisition for its consumer.
        await asyncio.gather(*(self._release(p) for p in sorted(set(self._leases) - share)))
        await asyncio.gather(*(self._acquire(p) for p in sorted(share - set(self._leases))))

    def _lock(self, partition: int) -> asyncio.Lock:
        return self._locks.setdefault(partition, asyncio.Lock())

    async def _acquire(self, partition: int) -> None:
        assert self._leases_kv is not None
        async with self._lock(partition):
            sent = self._clock()
            try:
                revision = await self._leases_kv.create(lease_key(partition), self.node_id.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                return  # still held (its owner is handing it over, or its lease has not run out yet)
        self._leases[partition] = Lease(token=revision, revision=revision,
                                        valid_until=sent + self._topology.lease_ttl_s - self._margin_s)
        self.rebalances += 1
        log.info("cluster.partition_acquired", node=self.node_id, partition=partition, token=revision)
        try:
            await self._acquired(partition, revision)
        except Exception:
            # Not started (NATS or the database failed): give the lease back for the next round.
            log.exception("cluster.partition_start_failed", node=self.node_id, partition=partition)
            await self._release(partition)

    async def _release(self, partition: int) -> None:
        assert self._leases_kv is not None
        lease = self._leases[partition]
        await self._released(partition)  # the reader stops and acks (renewals go on) before the key is freed
        del self._leases[partition]
        self.rebalances += 1
        log.info("cluster.partition_released", node=self.node_id, partition=partition)
        async with self._lock(partition):
            try:
                await self._leases_kv.delete(lease_key(partition), last=lease.revision)
            except nats.js.errors.APIError as err:
                if err.err_code != 10071:  # wrong last sequence: it expired and was taken; nothing to free
                    log.warning("cluster.release_failed", node=self.node_id, partition=partition, error=str(err))
            except (nats.errors.Error, asyncio.TimeoutError) as err:
                log.warning("cluster.release_failed", node=self.node_id, partition=partition, error=str(err))
