"""The settings every node of a cluster computes with, compared between the live nodes.

Every node closes cloud-side windows, throttles reports, invalidates silent devices, trains and
expires ML models and answers in one region and account: a node started with another
``--metrics-window`` closes windows of another length; another ``--time-scale`` makes every period
another. Nothing said so (the outside-in trial: "flags not checked to match between nodes").

Each node puts its values under its node id in the ``iotdefender-nodes`` bucket every tick (the
entries expire with the lease TTL, like the members'), so the bucket holds the live nodes'. A node
that starts reads them first and is refused (exit 2) if any live node differs, naming the flag,
both values and the node. Two nodes started at the same moment with different values may both
pass that check: every node also compares at every tick and logs
``cluster.settings_differ`` (an error, once per node and difference) so it shows in the logs and
alerts. To change one of these flags, stop every node (a clean stop removes its entry; a node
killed leaves it for one lease TTL).

The same entry carries what the node *announces* for rolling upgrades, which is not compared
(``announced``): the report message versions it reads (pipeline/report_message.py,
``READS_ANNOUNCEMENT``). A broker node writes the highest version every live node reads, from the
entries read at start and at every comparison.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping

import nats.errors
import orjson
import structlog
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from iotdefender.cluster.ownership import bucket_entries, bucket_keys
from iotdefender.cluster.topology import Topology
from iotdefender.settings import Settings

log = structlog.get_logger("iotdefender.cluster")

Values = Mapping[str, str | float | int]

def shared_values(settings: Settings) -> dict[str, str | float | int]:
    """The flags that must be the same on every node, as they are in effect (scaled periods)."""
    return {
        "--region": settings.region,
        "--account-id": settings.account_id,
        "--time-scale": settings.time_scale,
        "--report-min-interval": settings.effective_report_min_interval,
        "--metrics-window": settings.effective_metrics_window,
        "--metric-retention": settings.effective_metric_retention,
        "--invalidation-period": settings.effective_invalidation_period,
        "--violation-retention": settings.effective_violation_retention,
        "--ml-training-period": settings.effective_ml_training_period,
        "--ml-min-datapoints": settings.ml_min_datapoints,
        "--ml-refresh-period": settings.effective_ml_refresh_period,
        "--ml-expiry": settings.effective_ml_expiry,
        "--cloud-metrics": "on" if settings.cloud_metrics else "off",
        # One session on an operator's broker for the cluster: with two, both would read and
        # answer every report. Published only by nodes given --mqtt-url (not compared otherwise).
        **({"--mqtt-client-id": settings.mqtt_client_id} if settings.mqtt_url is not None else {}),
        **device_policy(settings),
    }


def device_policy(settings: Settings) -> dict[str, str]:
    """What a device may do on a broker node's own Mosquitto: a device reconnecting to another node
    must find the same policy there. The ACL file is compared by its content (nodes keep it at paths
    of their own), as a digest. Published only by broker nodes running Mosquitto."""
    if "broker" not in settings.role_set or settings.mqtt_url is not None:
        return {}
    acl_file = "none"
    if settings.mqtt_acl_file is not None:
        acl_file = "sha256:" + hashlib.sha256(settings.mqtt_acl_file.read_bytes()).hexdigest()[:16]
    policy = {"--mqtt-acl": settings.mqtt_acl, "--mqtt-acl-file": acl_file, "--mqtt-auth": settings.effective_mqtt_auth}
    if settings.effective_mqtt_auth == "cert":  # a certificate refused as unregistered on one node, let in on another
        policy["--mqtt-certificates"] = settings.mqtt_certificates
    return policy


def differences(mine: Values, theirs: Values, node: str) -> list[str]:
    """What differs between this node's values and ``node``'s, one sentence per flag. A flag the
    other node does not publish is not compared: a node of another version may not know it, and a
    rolling upgrade must not be refused for that."""
    return [f"{flag} is {mine[flag]!r} on this node but {theirs[flag]!r} on node {node}"
            for flag in sorted(mine) if flag in theirs and theirs[flag] != mine[flag]]


class SettingsMismatch(RuntimeError):
    """A live node of the cluster computes with other values of the flags that must match."""


class SharedSettings:
    """Publishes this node's values and compares them with the live nodes' (``check`` at start)."""

    def __init__(self, js: JetStreamContext, topology: Topology, node_id: str, values: Values,
                 announce: Mapping[str, object] | None = None) -> None:
        self._js, self._topology, self._node_id = js, topology, node_id
        self._values = dict(values)  # compared; ``announce`` (e.g. report_message.announcement()) is published only
        self._encoded = orjson.dumps({**(announce or {}), **self._values})
        self._kv: KeyValue | None = None
        self._reported: set[tuple[str, str]] = set()
        self._peers: dict[str, dict[str, object]] = {}  # the other live nodes' entries, as last read

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self._topology.nodes_bucket)
        return self._kv

    async def others(self) -> dict[str, list[str]]:
        """{node: what differs} for every live node whose values differ from this node's."""
        # The entries with their values in one listing: a read per node after listing the keys
        # made every node ask the bucket's leader once per other node each tick (N x N requests a
        # second across the cluster, one after the other on each node's event loop).
        entries = await bucket_entries(await self._bucket())
        peers = {node: orjson.loads(value or b"{}") for node, value in entries.items() if node != self._node_id}
        self._peers = peers
        found: dict[str, list[str]] = {}
        for node, theirs in peers.items():
            differ = differences(self._values, theirs, node)  # type: ignore[arg-type]
            if differ:
                found[node] = differ
        return found

    async def unannounced(self, members: list[str]) -> bool:
        """Whether any of ``members`` (detect nodes) has no entry here: a node of a release before
        this bucket (28ec2af and older), whose fencing tokens are bare revisions (ownership.py,
        ``BareTokenMembers``). Every later release puts its entry before it becomes a member and
        removes it after it has left."""
        if not members:
            return False
        announced = set(await bucket_keys(await self._bucket()))
        return any(member not in announced for member in members)

    def is_live(self, node: str) -> bool:
        """Whether ``node`` had its entry in the bucket at the last read (it expires a lease TTL
        after the node stopped putting it: killed, or cut off from NATS)."""
        return node == self._node_id or node in self._peers

    def announced(self, key: str) -> list[object]:
        """What each live node (but this one) announced under ``key`` at the last read; None for a
        node that announced nothing there (a release before that announcement)."""
        return [entry.get(key) for entry in self._peers.values()]

    async def check(self) -> None:
        """Refuse (``SettingsMismatch``) if a live node differs; else publish this node's values."""
        found = await self.others()
        if found:
            raise SettingsMismatch("; ".join(sentence for differ in found.values() for sentence in differ) +
                                   " (these flags must be the same on every node: docs/cluster.md)")
        await self.publish()

    async def publish(self) -> None:
        await (await self._bucket()).put(self._node_id, self._encoded)

    async def leave(self) -> None:
        """Remove this node's values (a clean stop): once every node has left, a node with other
        values starts at once instead of one lease TTL later."""
        await (await self._bucket()).delete(self._node_id)

    async def run(self, tick_s: float) -> None:
        """Keep this node's entry alive; read the others' every tick (what they announce decides
        what this node may send them: a rolling upgrade's node of the release before is seen within
        a tick) and log each difference once."""
        while True:
            await asyncio.sleep(tick_s)
            try:
                await self.publish()
                for node, differ in (await self.others()).items():
                    for sentence in differ:
                        if (node, sentence) not in self._reported:
                            self._reported.add((node, sentence))
                            log.error("cluster.settings_differ", node=self._node_id, other=node, detail=sentence)
            except (nats.errors.Error, asyncio.TimeoutError) as error:
                log.warning("cluster.settings_publish_failed", node=self._node_id, error=repr(error))
