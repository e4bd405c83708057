"""Which of the process's counters and gauges a cluster node exports: those of its own roles.

Every metric is created when its module is imported, and a cluster node imports the code of every
role, so a node without a role would export that role's series, always 0: a broker-only node
saying 0 redeliveries and 0 late cloud windows, a detect-only node 0 reports accepted and 0 MQTT
denials. A 0 reads as "nothing happened" and sums over nodes hide the node that does the work, so
a node drops the metrics of the roles it does not hold (the single box holds them all).

Every node, the single box included, says what it is: ``iotdefender_node_info{node, roles,
version} 1`` (``describe_node``), so a dashboard can join any series to its node's roles and release.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Info
from prometheus_client.registry import Collector

from iotdefender import __version__
from iotdefender.alerts.outbox import DELIVERIES
from iotdefender.api.http_metrics import HTTP_REQUESTS, HTTP_SECONDS
from iotdefender.brokers.certificate_gate import ACCEPTED_CERTIFICATES, REFUSED_CERTIFICATES
from iotdefender.brokers.gatekeeper import MQTT_DENIALS
from iotdefender.brokers.mosquitto.connections import MQTT_CONNECTED
from iotdefender.cloud.cluster_windows import PARTS_LATE, PARTS_LOST, PARTS_PUBLISHED, WINDOWS_INCOMPLETE
from iotdefender.cluster.health import DETECT_GAUGES
from iotdefender.cluster.report_stream import REDELIVERED, SET_ASIDE
from iotdefender.ingest.cluster_commit import SETTLED, UNANSWERED
from iotdefender.ingest.service import ANSWER_SECONDS, QUEUE_LIMIT, QUEUED, REJECTIONS, REPORTS
from iotdefender.pipeline.batch_isolation import ISOLATED, RETRIES
from iotdefender.pipeline.counters import COUNTERS
from iotdefender.pipeline.transaction_metrics import TRANSACTION_REPORTS, TRANSACTION_SECONDS

#: The roles in the order a node's ``roles`` label lists them.
ROLE_ORDER = ("broker", "api", "detect")

NODE_INFO = Info("iotdefender_node", "This node: its id, its roles and the release it runs")

# The metrics only a role's code moves; a metric every node moves (NATS connection, database
# availability) is in none of them.
ROLE_METRICS: dict[str, tuple[Collector, ...]] = {
    "broker": (REPORTS, REJECTIONS, QUEUED, QUEUE_LIMIT, UNANSWERED, SETTLED, PARTS_PUBLISHED, PARTS_LOST,
               MQTT_DENIALS, ANSWER_SECONDS, MQTT_CONNECTED, REFUSED_CERTIFICATES,
               ACCEPTED_CERTIFICATES),
    "api": (HTTP_REQUESTS, HTTP_SECONDS),
    # A detect node evaluates (the violation counters), stores (batch isolation: a broker node's
    # commits are the detect nodes'), sends the alerts and closes cloud windows.
    "detect": (*DETECT_GAUGES, REDELIVERED, SET_ASIDE, PARTS_LATE, WINDOWS_INCOMPLETE, *COUNTERS.values(), DELIVERIES, ISOLATED, RETRIES,
               TRANSACTION_SECONDS, TRANSACTION_REPORTS),
}

# Moved only by the embedded Mosquitto's plugin events: with an external broker (--mqtt-url) the
# service sees no device connect, and a gauge stuck at 0 would read "no device connected".
EMBEDDED_BROKER_METRICS: tuple[Collector, ...] = (MQTT_CONNECTED, REFUSED_CERTIFICATES, ACCEPTED_CERTIFICATES)


def not_exported(roles: Collection[str]) -> list[Collector]:
    """The metrics of the roles not in ``roles`` that no role in it moves."""
    kept = {id(metric) for role in roles for metric in ROLE_METRICS.get(role, ())}
    return [metric for role, metrics in ROLE_METRICS.items() if role not in roles
            for metric in metrics if id(metric) not in kept]


def export_only(roles: Collection[str], registry: CollectorRegistry = REGISTRY, *,
                embedded_broker: bool = True) -> None:
    """Stop exporting the metrics of the roles this node does not hold, and those of the embedded
    broker when the devices' broker is an external one."""
    _unregister([*not_exported(roles), *(() if embedded_broker else EMBEDDED_BROKER_METRICS)], registry)


def roles_text(roles: Collection[str]) -> str:
    """The roles in ``ROLE_ORDER``, comma-separated: as ``iotdefender_node_info`` and the ``ready`` line give them."""
    return ",".join(role for role in ROLE_ORDER if role in roles)


def describe_node(node: str, roles: Collection[str], version: str = __version__, info: Info = NODE_INFO) -> None:
    """``iotdefender_node_info{node, roles, version} 1``."""
    info.info({"node": node, "roles": roles_text(roles), "version": version})


def _unregister(metrics: Iterable[Collector], registry: CollectorRegistry) -> None:
    for metric in metrics:
        with contextlib.suppress(KeyError):  # already removed (a second node in one test process)
            registry.unregister(metric)
