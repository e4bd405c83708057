"""The metrics export's messages (alerts/metrics_export.py): what a profile exports, and batches
cut to AWS IoT's largest MQTT message."""

from __future__ import annotations

import json

from iotdefender.alerts.metrics_export import (MAX_MESSAGE_BYTES, MQTT_PREFIX, export_rows, exported_series, merged,
                                             messages)

CONFIG = {"mqttTopic": "export/a", "roleArn": "arn:aws:iam::123456789012:role/export"}
PORTS = {"name": "ports", "metric": "aws:num-listening-tcp-ports", "exportMetric": True}
SENT_IN = {"name": "sent", "metric": "aws:num-messages-sent", "exportMetric": True,
           "metricDimension": {"dimensionName": "sensors"}}


def profile(**members):  # type: ignore[no-untyped-def]
    return {"name": "p", "behaviors": [], "additional_metrics_to_retain_v2": [], "metrics_export_config": CONFIG,
            **members}


def test_a_profile_exports_the_series_marked_and_only_with_a_topic():
    marked = profile(behaviors=[PORTS, {**PORTS, "name": "bytes", "metric": "aws:all-bytes-out", "exportMetric": False}],
                     additional_metrics_to_retain_v2=[SENT_IN, {"metric": "aws:listening-tcp-ports"}])
    assert exported_series(marked) == {
        "aws:num-listening-tcp-ports": ("aws:num-listening-tcp-ports", None),
        "aws:num-messages-sent|sensors|IN": ("aws:num-messages-sent", {"name": "sensors", "operator": "IN"})}
    assert exported_series({**marked, "metrics_export_config": None}) == {}


def test_rows_per_topic_once_per_datapoint_whatever_the_profiles():
    one, two = profile(behaviors=[PORTS]), profile(name="q", behaviors=[PORTS], additional_metrics_to_retain_v2=[SENT_IN])
    other = profile(name="r", behaviors=[PORTS], metrics_export_config={**CONFIG, "mqttTopic": "export/b"})
    items = [("t1", {"aws:num-listening-tcp-ports": {"count": 2}, "aws:num-messages-sent|sensors|IN": {"count": 5},
                     "aws:all-bytes-out": {"count": 9}}, 1000.5, 1)]
    rows = export_rows(items, lambda thing: [one, two, other], lambda topic: f"arn:topic/{topic}", 7.0)
    by_topic = {row["destination"]: json.loads(row["message"]) for row in rows}
    assert set(by_topic) == {MQTT_PREFIX + "export/a", MQTT_PREFIX + "export/b"}
    assert by_topic[MQTT_PREFIX + "export/a"] == {"version": "1.0", "metrics": [
        {"name": "aws:num-listening-tcp-ports", "thing": "t1", "value": {"count": 2}, "version": 1, "timestamp": 1000500},
        {"name": "aws:num-messages-sent", "thing": "t1", "value": {"count": 5}, "version": 1, "timestamp": 1000500,
         "dimension": {"name": "sensors", "operator": "IN"}}]}
    assert [len(m["metrics"]) for m in by_topic.values()] == [2, 1]
    assert {row["target_arn"] for row in rows} == {"arn:topic/export/a", "arn:topic/export/b"}
    assert export_rows(items, lambda thing: [profile(metrics_export_config=None, behaviors=[PORTS])],
                       str, 7.0) == []


def test_a_large_batch_is_cut_into_messages_of_at_most_128_kb_in_order():
    entries = [json.dumps({"name": "m", "thing": f"thing-{n:05d}", "value": {"count": n}}).encode() for n in range(5000)]
    cut = messages(entries)
    assert len(cut) > 1 and all(len(m.encode()) <= MAX_MESSAGE_BYTES for m in cut)
    assert [e["thing"] for m in cut for e in json.loads(m)["metrics"]] == [f"thing-{n:05d}" for n in range(5000)]


def test_rows_of_one_topic_are_merged_in_order_into_as_few_messages_as_128_kb_allow():
    small = [messages([json.dumps({"thing": f"a{row}-{n}"}).encode() for n in range(3)])[0] for row in range(50)]
    assert len(merged(small)) == 1  # 50 transactions' rows, one message
    large = messages([json.dumps({"thing": f"b{n:05d}", "pad": "x" * 100}).encode() for n in range(2000)])
    together = merged(small + large)
    assert len(together) == len(large) + 1 and all(len(m.encode()) <= MAX_MESSAGE_BYTES for m in together)
    assert [e["thing"] for m in together for e in json.loads(m)["metrics"]] == \
        [f"a{row}-{n}" for row in range(50) for n in range(3)] + [f"b{n:05d}" for n in range(2000)]
    assert merged([]) == []
