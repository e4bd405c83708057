"""The JetStream objects cluster mode needs, created idempotently by whichever node starts first.

- one stream of reports, ``IOTDEFENDER_REPORTS``, subjects ``iotdefender.reports.<partition>``,
  work-queue retention (a report leaves the stream once a detect node has committed and acked it),
  a duplicate window for ``Nats-Msg-Id`` so a broker node's retried publish is stored once;
- one durable pull consumer per partition (``detect-<partition>``), filtered to its subject, so a
  partition is read by one node at a time in stream order;
- three key-value buckets whose entries expire unless refreshed: ``iotdefender-members`` (live
  detect nodes), ``iotdefender-leases`` (which node owns which partition; see ownership.py) and
  ``iotdefender-nodes`` (every live node's values of the flags that must match; shared_settings.py).

Replication is R3 when the node is connected to a cluster of three or more servers, R1 otherwise.
The partition count is recorded in the stream's metadata; a node that starts with another count or
another replication factor than what exists is refused with a message that says what differs and
what to do, instead of silently reading partitions that mean something else.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from iotdefender.cluster.partitions import PARTITION_COUNT, SUBJECT_PREFIX, subject_of

PARTITIONS_KEY = "iotdefender.partitions"
# nats-server's error code for "stream name already in use with a different configuration".
_STREAM_CONFIG_DIFFERS = 10058
# ... and for a consumer created again with another configuration ("consumer already exists").
_CONSUMER_EXISTS = 10148


class TopologyMismatch(RuntimeError):
    """What exists in JetStream was created with other settings than this node's."""


@dataclass(frozen=True)
class Topology:
    """Names and settings shared by every node of one cluster (they must agree, or start is refused)."""

    partitions: int = PARTITION_COUNT
    replicas: int = 1
    stream: str = "IOTDEFENDER_REPORTS"
    subject_prefix: str = SUBJECT_PREFIX
    members_bucket: str = "iotdefender-members"
    leases_bucket: str = "iotdefender-leases"
    #: Every live node's values of the flags that must match (shared_settings.py).
    nodes_bucket: str = "iotdefender-nodes"
    #: How long a member entry or a partition lease lives without a refresh (the takeover bound).
    lease_ttl_s: float = 5.0
    #: How long JetStream keeps Nats-Msg-Id values to drop a retried publish.
    duplicate_window_s: float = 120.0
    #: How long an unconsumed report stays (no detect node running at all).
    max_age_s: float = 7 * 24 * 3600.0
    #: Redelivery to the same consumer if a fetched batch is neither acked nor nakked.
    ack_wait_s: float = 30.0
    max_ack_pending: int = 1000

    def consumer_of(self, partition: int) -> str:
        """The durable consumer name of one partition."""
        return f"detect-{partition:04d}"

    def subject_of(self, partition: int) -> str:
        return subject_of(partition, self.subject_prefix)


def replicas_for(servers: int) -> int:
    """R3 with three or more JetStream servers (survives one loss with a quorum), R1 otherwise."""
    return 3 if servers >= 3 else 1


def count_servers(nc: Client) -> int:
    """Servers of the cluster this connection is on.

    A clustered server's INFO lists every member's client URL, itself included, in ``connect_urls``
    (a standalone server sends none), but the list fills in as routes gossip: right after a cluster
    forms it can be short. The servers the node was configured with (``--cluster-url``) are counted
    too, taking the larger of the two counts, not their union, since the same server may be named by
    a host name in one and an address in the other.
    """
    info = nc._server_info or {}  # nats-py keeps the INFO it received; there is no public accessor
    advertised = len(set(info.get("connect_urls") or []))
    discovered = {(u.hostname, u.port) for u in nc.discovered_servers}
    configured = len({(u.hostname, u.port) for u in nc.servers} - discovered)
    return max(1, advertised, configured)


def _consumer_config(topology: Topology, partition: int) -> ConsumerConfig:
    name = topology.consumer_of(partition)
    return ConsumerConfig(
        durable_name=name, name=name, filter_subject=topology.subject_of(partition),
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT, ack_wait=topology.ack_wait_s,
        max_deliver=-1, max_ack_pending=topology.max_ack_pending, num_replicas=topology.replicas)


NO_PEERS_FOR_PLACEMENT = 10005  # nats-server's JSClusterNoPeersErr


async def ensure(js: JetStreamContext, topology: Topology, patience_s: float = 30.0) -> None:
    """Create the stream, consumers and buckets if missing; refuse if they exist with other settings.

    A cluster that has just formed, or is electing a leader, answers JetStream API requests with
    timeouts or 503s for a few seconds (seen in the tests on a fresh 3-server cluster), and refuses
    to place replicated streams until enough servers are known online: every step is idempotent,
    so the whole is retried for up to ``patience_s``. A mismatch is never retried.
    """
    deadline = asyncio.get_running_loop().time() + patience_s
    while True:
        try:
            return await _ensure_all(js, topology)
        except (asyncio.TimeoutError, nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError):
            if asyncio.get_running_loop().time() > deadline:
                raise
        except nats.js.errors.BadRequestError as error:
            # "no suitable peers for placement": fewer servers than the replicas are known online
            # to the meta leader yet (a cluster still forming, a server restarting); seen once on
            # a fresh 3-server cluster whose servers all answered /healthz.
            if error.err_code != NO_PEERS_FOR_PLACEMENT or asyncio.get_running_loop().time() > deadline:
                raise
        await asyncio.sleep(0.5)


async def _ensure_all(js: JetStreamContext, topology: Topology) -> None:
    await _ensure_stream(js, topology)
    for partition in range(topology.partitions):
        await ensure_consumer(js, topology, partition)
    for bucket in (topology.members_bucket, topology.leases_bucket, topology.nodes_bucket):
        await _ensure_bucket(js, topology, bucket)


async def ensure_consumer(js: JetStreamContext, topology: Topology, partition: int,
                          timeout_s: float | None = None) -> None:
    """The partition's durable consumer (idempotent: the same config again is a no-op); the
    request waits ``timeout_s`` (None: the JetStream context's default)."""
    try:
        await js.add_consumer(topology.stream, _consumer_config(topology, partition), timeout=timeout_s)
    except nats.js.errors.APIError as err:
        if err.err_code == _CONSUMER_EXISTS:
            raise TopologyMismatch(
                f"consumer {topology.consumer_of(partition)} of stream {topology.stream} exists with other "
                f"settings: {err.description}") from err
        raise


#: The first nats-server release with ``$JS.API.CONSUMER.RESET`` (ADR-60).
CONSUMER_RESET_SINCE = (2, 14)


async def rewind_consumer(js: JetStreamContext, topology: Topology, partition: int, timeout_s: float) -> int:
    """Make the partition's consumer deliver again everything not acknowledged, first and in stream
    order; returns the consumer sequence of the last delivery it still counts (the next is that + 1).

    ``$JS.API.CONSUMER.RESET`` (ADR-60, nats-server 2.14+) rewinds the consumer to its ack floor. It
    is answered by the consumer's own Raft group. Deleting and creating the consumer, which does the
    same in a work-queue stream and is what a server before 2.14 gets, are requests to the
    JetStream meta leader, and the new consumer is a new Raft group: when the server that died was
    the meta leader, a reader that had lost a delivery on it waited for the meta group's election
    (its new leader 12.6 s after the kill in one run of bench/nats_stall.py), while a reset was
    answered in 2 ms by the consumer's surviving leader."""
    name = topology.consumer_of(partition)
    version = str((js._nc._server_info or {}).get("version", "0"))  # nats-py's INFO: see count_servers
    if tuple(int(part) for part in re.findall(r"\d+", version)[:2]) >= CONSUMER_RESET_SINCE:
        # nats-py 2.16.0 (pinned) has no call for it; ``_api_request`` raises the answer's error.
        answer = await js._api_request(f"{js._prefix}.CONSUMER.RESET.{topology.stream}.{name}", b"",
                                       timeout=timeout_s)
        return int((answer.get("delivered") or {}).get("consumer_seq") or 0)
    await asyncio.wait_for(js.delete_consumer(topology.stream, name), timeout_s)
    await ensure_consumer(js, topology, partition, timeout_s)
    return 0  # a new consumer numbers its deliveries from 1


async def _ensure_stream(js: JetStreamContext, topology: Topology) -> None:
    try:
        info = await js.stream_info(topology.stream)
    except nats.js.errors.NotFoundError:
        info = None
    if info is not None:
        _refuse_if_different(topology, info.config)
        return
    config = StreamConfig(
        name=topology.stream, subjects=[f"{topology.subject_prefix}.*"], retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE, num_replicas=topology.replicas, max_age=topology.max_age_s,
        duplicate_window=topology.duplicate_window_s, metadata={PARTITIONS_KEY: str(topology.partitions)})
    try:
        await js.add_stream(config)
    except nats.js.errors.APIError as err:
        if err.err_code != _STREAM_CONFIG_DIFFERS:
            raise
        # Another node created it first, with other settings: say which.
        _refuse_if_different(topology, (await js.stream_info(topology.stream)).config)


def _refuse_if_different(topology: Topology, existing: StreamConfig) -> None:
    recorded = (existing.metadata or {}).get(PARTITIONS_KEY)
    if recorded != str(topology.partitions):
        raise TopologyMismatch(
            f"stream {topology.stream} holds reports in {recorded} partitions, this node is configured for "
            f"{topology.partitions}: partitions map things to nodes and cannot change under running nodes; "
            "the count is fixed by the release (cluster/partitions.py): run the same release on every node, or "
            "drain the stream and delete it to repartition")
    if existing.num_replicas != topology.replicas:
        raise TopologyMismatch(
            f"stream {topology.stream} is replicated R{existing.num_replicas}, this node expects "
            f"R{topology.replicas} (from the number of NATS servers it was given and sees): give "
            "--cluster-url every server's URL (one that is down counts too), change it deliberately "
            "with `nats stream edit --replicas`, or connect to the cluster the stream was made on")


async def _ensure_bucket(js: JetStreamContext, topology: Topology, bucket: str) -> None:
    try:
        existing = (await js.stream_info(f"KV_{bucket}")).config
    except nats.js.errors.NotFoundError:
        existing = None
    if existing is None:
        try:
            await js.create_key_value(KeyValueConfig(
                bucket=bucket, history=1, ttl=topology.lease_ttl_s, replicas=topology.replicas,
                storage=StorageType.FILE))
            return
        except nats.js.errors.APIError as err:
            if err.err_code != _STREAM_CONFIG_DIFFERS:
                raise
            existing = (await js.stream_info(f"KV_{bucket}")).config
    if existing.num_replicas != topology.replicas:
        raise TopologyMismatch(
            f"bucket {bucket} is replicated R{existing.num_replicas}, this node expects R{topology.replicas}")
    if existing.max_age is None or abs(existing.max_age - topology.lease_ttl_s) > 1e-3:
        raise TopologyMismatch(
            f"bucket {bucket} expires entries after {existing.max_age}s, this node's lease is "
            f"{topology.lease_ttl_s}s: every node must use the same lease (--cluster-lease-ttl)")
