"""A cluster node exports the metrics of its own roles only (role_metrics.py)."""

from prometheus_client import CollectorRegistry, Counter, generate_latest

from iotdefender.cloud.cluster_windows import PARTS_LATE, PARTS_PUBLISHED
from iotdefender.cluster.health import OWNED
from iotdefender.cluster.report_stream import REDELIVERED
from iotdefender.ingest.service import REPORTS
from iotdefender.role_metrics import ROLE_METRICS, export_only, not_exported


def test_a_broker_node_drops_the_detect_roles_metrics_and_keeps_its_own() -> None:
    dropped = not_exported({"broker", "api"})
    assert REDELIVERED in dropped and PARTS_LATE in dropped and OWNED in dropped
    assert REPORTS not in dropped and PARTS_PUBLISHED not in dropped


def test_a_detect_node_drops_the_broker_roles_metrics() -> None:
    dropped = not_exported({"detect"})
    assert REPORTS in dropped and PARTS_PUBLISHED in dropped
    assert REDELIVERED not in dropped and OWNED not in dropped


def test_every_role_keeps_everything_and_an_api_node_drops_both_sides() -> None:
    assert not_exported({"broker", "api", "detect"}) == []
    assert len(not_exported({"api"})) == sum(len(metrics) for metrics in ROLE_METRICS.values())


def test_export_only_unregisters_from_the_registry_once() -> None:
    registry = CollectorRegistry()
    registry.register(REDELIVERED)
    registry.register(REPORTS)
    kept = Counter("iotdefender_test_kept", "a metric of no role", registry=registry)
    kept.inc()
    export_only({"broker"}, registry)
    export_only({"broker"}, registry)  # a second call finds them gone
    text = generate_latest(registry).decode()
    assert "iotdefender_cluster_redeliveries_total" not in text
    assert "iotdefender_reports_total" in text and "iotdefender_test_kept_total 1.0" in text
