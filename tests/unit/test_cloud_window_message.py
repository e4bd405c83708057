"""The cloud window between nodes: told apart from a report without decoding it, round-tripped
with its None topic keys, and merged from several broker nodes' parts."""

from __future__ import annotations

import asyncio

from iotdefender.cloud.aggregator import Aggregator, ClientWindow, merge_windows
from iotdefender.cloud.cluster_windows import (CloudWindowEnd, CloudWindowMessage, WindowPublisher, decode, encode,
                                               ends_readable)
from iotdefender.cloud.service import CloudEventIntake
from iotdefender.pipeline.report_message import ReportMessage, encode as encode_report


def test_a_report_is_not_a_cloud_window_even_for_a_thing_named_like_one():
    assert decode(encode_report(ReportMessage("cloud-window", {}, 1.0, 1, "json", "r"))) is None
    part = ClientWindow(connection_attempts=2, auth_failures={None: 1, "a/b": 2}, sent={None: 3},
                        sent_max_bytes={None: 5}, source_ips={"10.0.0.1": None}, last_disconnect=3.5)
    message = CloudWindowMessage("t", 3, 2.0, "node-a", part)
    assert decode(encode(message)) == message
    assert decode(encode(message)[:-3]) is None  # truncated: logged, not a report either


def test_an_end_of_window_is_told_apart_from_a_part_and_a_report():
    end = CloudWindowEnd("node-a", 1, 3, 5, 2.0, last=True)
    assert decode(encode(end)) == end
    assert decode(encode_report(ReportMessage("cloud-window-end", {}, 1.0, 1, "json", "r"))) is None


def test_ends_are_sent_only_when_every_live_node_announces_it_reads_them():
    assert ends_readable([]) and ends_readable([1, 1])
    assert not ends_readable([1, None])  # a node of the release before: it would read an end as a report


def test_parts_merge_into_one_window_and_the_later_of_connect_and_disconnect_wins():
    on_a = ClientWindow(connection_attempts=1, disconnects=1, sent={"t": 4}, sent_max_bytes={"t": 10},
                        source_ips={"10.0.0.1": None}, last_connect_ok=100.0, last_disconnect=110.0)
    on_b = ClientWindow(connection_attempts=1, sent={"t": 3, None: 1}, sent_max_bytes={"t": 20, None: 2},
                        auth_failures={None: 1}, source_ips={"10.0.0.2": None}, last_connect_ok=120.0)
    merged = merge_windows([on_a, on_b])
    assert (merged.connection_attempts, merged.disconnects, merged.sent, merged.sent_max_bytes, merged.auth_failures) \
        == (2, 1, {"t": 7, None: 1}, {"t": 20, None: 2}, {None: 1})
    assert list(merged.source_ips) == ["10.0.0.1", "10.0.0.2"]
    aggregator = Aggregator(300.0)
    aggregator.add_window(0, "dev", merged)
    assert aggregator.datapoints("dev", aggregator.take(0)["dev"], 300.0)["aws:disconnect-duration"] == {"count": 0}
    aggregator.add_window(1, "dev", merge_windows([on_a]))  # it left and did not come back
    assert aggregator.datapoints("dev", aggregator.take(1)["dev"], 290.0)["aws:disconnect-duration"] == {"count": 3}


def test_a_broker_node_publishes_one_part_per_device_seen_and_none_for_a_client_id_no_thing_can_have():
    now = [1000.0]
    sent: list[tuple[str, str]] = []

    async def publish(thing: str, payload: bytes, message_id: str) -> None:
        sent.append((thing, message_id))

    intake = CloudEventIntake(300.0, lambda: now[0])
    publisher = WindowPublisher(intake, publish, "node-a", clock=lambda: now[0])
    intake.message_sent("dev-1", "t", 3)
    intake.message_sent("bad\nid", "t", 3)
    intake.connect_attempt("dev-2", "10.0.0.1", True)
    now[0] = 1200.0 + 0.2  # the window [900, 1200) ended
    assert asyncio.run(publisher.publish_due()) == 2
    assert sorted(sent) == [("dev-1", "cloud/node-a/dev-1/3"), ("dev-2", "cloud/node-a/dev-2/3")]
