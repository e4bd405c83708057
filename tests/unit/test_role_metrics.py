"""A cluster node exports the metrics of its own roles only (role_metrics.py)."""

from prometheus_client import CollectorRegistry, Counter, Info, generate_latest

from iotdefender.api.http_metrics import HTTP_REQUESTS
from iotdefender.brokers.mosquitto.connections import MQTT_CONNECTED
from iotdefender.cloud.cluster_windows import PARTS_LATE, PARTS_PUBLISHED
from iotdefender.cluster.health import OWNED
from iotdefender.cluster.report_stream import REDELIVERED
from iotdefender.ingest.service import REPORTS
from iotdefender.pipeline.transaction_metrics import TRANSACTION_SECONDS
from iotdefender.role_metrics import ROLE_METRICS, describe_node, export_only, not_exported


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
    assert len(not_exported({"api"})) == sum(len(metrics) for role, metrics in ROLE_METRICS.items() if role != "api")


def test_the_new_series_belong_to_the_role_whose_code_moves_them() -> None:
    assert HTTP_REQUESTS in not_exported({"broker", "detect"}) and HTTP_REQUESTS not in not_exported({"api"})
    assert MQTT_CONNECTED in not_exported({"api", "detect"}) and MQTT_CONNECTED not in not_exported({"broker"})
    assert TRANSACTION_SECONDS in not_exported({"broker", "api"})
    assert TRANSACTION_SECONDS not in not_exported({"detect"})


def test_an_external_broker_drops_the_connected_clients_gauge() -> None:
    registry = CollectorRegistry()
    registry.register(MQTT_CONNECTED)
    registry.register(REPORTS)
    export_only({"broker", "api", "detect"}, registry, embedded_broker=False)
    text = generate_latest(registry).decode()
    assert "iotdefender_mqtt_connected_clients" not in text and "iotdefender_reports_total" in text


def test_node_info_lists_the_roles_in_one_order() -> None:
    registry = CollectorRegistry()
    info = Info("iotdefender_node", "node", registry=registry)
    describe_node("vm-1-42-abc", {"detect", "broker"}, "9.9.9", info)
    assert registry.get_sample_value("iotdefender_node_info",
                                     {"node": "vm-1-42-abc", "roles": "broker,detect", "version": "9.9.9"}) == 1


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
