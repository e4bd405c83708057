"""The plugin's event batches (NUL-separated records) decoded into cloud-side events and refusals."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge
from structlog.testing import capture_logs

from iotdefender.brokers.gatekeeper import Gatekeeper
from iotdefender.brokers.mosquitto.connections import ConnectedClients
from iotdefender.brokers.mosquitto.events import apply_events
from iotdefender.brokers.observer import NULL_OBSERVER


class Recorder:
    """Stands in for the observer and the denial counter: every call by its short name, with its
    time (``at``) last when the batch gave one."""

    NAMES = {"connect_attempt": "connect", "authorization_failure": "authorization-failure",
             "disconnect": "disconnect", "message_sent": "sent", "message_received": "received",
             "record_denial": "denial", "record_rejected_by_broker": "answered",
             "record_throttled": "throttled"}

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        name = self.NAMES[method]

        def call(*args, at=None) -> None:  # type: ignore[no-untyped-def]
            self.calls.append((name, *args) if at is None else (name, *args, at))
        return call


def batch(*records: tuple[str, ...]) -> bytes:
    return b"".join("\0".join(r).encode() + b"\0" for r in records)


def connections() -> ConnectedClients:
    return ConnectedClients(Gauge("connected", "connected clients", registry=CollectorRegistry()))


def test_every_record_type_in_one_batch():
    observer, denials = Recorder(), Recorder()
    payload = batch(("C", "cam-1", "10.0.0.7", "1", ""), ("C", "cam-2", "10.0.0.8", "0", "auth_bad_password"),
                    ("A", "cam-1", "$aws/things/x/shadow", "publish_denied"), ("S", "cam-1", "212", "t/é"),
                    ("R", "cam-1", "cmd/cam-1"), ("D", "cam-1"))
    assert apply_events(payload, observer, denials, connections()) == 6
    assert observer.calls == [("connect", "cam-1", "10.0.0.7", True), ("connect", "cam-2", "10.0.0.8", False),
                              ("sent", "cam-1", "t/é", 212), ("received", "cam-1", "cmd/cam-1"),
                              ("disconnect", "cam-1")]
    assert denials.calls == [("denial", "cam-2", "auth_bad_password"),
                             ("denial", "cam-1", "publish_denied", "$aws/things/x/shadow")]


def test_without_cloud_metrics_only_refusals_are_counted():
    denials = Recorder()
    payload = batch(("C", "cam-2", "", "0", "auth_client_id_mismatch"), ("S", "cam-1", "3", "t"), ("D", "cam-1"))
    assert apply_events(payload, NULL_OBSERVER, denials, connections()) == 3
    assert denials.calls == [("denial", "cam-2", "auth_client_id_mismatch")]


def test_an_unknown_or_truncated_record_ends_the_batch():
    observer, denials = Recorder(), Recorder()
    assert apply_events(batch(("R", "a", "t")) + b"S\0b\0", observer, denials, connections()) == 1
    assert apply_events(batch(("X", "a"), ("R", "a", "t")), observer, denials, connections()) == 0
    assert observer.calls == [("received", "a", "t")]


def test_the_gatekeeper_asks_for_traffic_events_only_when_someone_observes_them():
    """Without cloud-side metrics the gatekeeper holds the null observer: refusals are still
    counted, nothing else is told, and the plugin is not asked for per-message events."""
    alone = Gatekeeper()
    alone.record_denial("cam-1", "publish_denied", "$aws/things/x/shadow")
    assert not alone.observes_traffic
    observer = Recorder()
    watched = Gatekeeper(observer=observer)
    watched.record_denial("cam-1", "publish_denied", "$aws/things/x/shadow")
    watched.record_denial("cam-2", "auth_bad_password")  # a refused CONNECT: no topic, no authorization failure
    assert watched.observes_traffic
    assert observer.calls == [("authorization-failure", "cam-1", "$aws/things/x/shadow")]


def test_connected_clients_are_the_plugins_count():
    """The gauge is the plugin's N record (it knows which connection owns each client id: a
    refused CONNECT or a takeover adds none), not a tally of the C and D events beside it."""
    registry = CollectorRegistry()
    connected = ConnectedClients(Gauge("connected", "connected clients", registry=registry))
    events = batch(("C", "cam-1", "10.0.0.7", "1", ""), ("C", "cam-2", "10.0.0.8", "1", ""),
                   ("C", "cam-3", "10.0.0.9", "0", "auth_bad_password"), ("C", "cam-1", "10.0.0.7", "1", ""),
                   ("N", "2"))
    assert apply_events(events, NULL_OBSERVER, Recorder(), connected) == 4  # the count is not an event
    assert registry.get_sample_value("connected") == 2 and len(connected) == 2
    apply_events(batch(("D", "cam-1")), NULL_OBSERVER, Recorder(), connected)
    assert registry.get_sample_value("connected") == 2, "a disconnect alone does not move it: its count follows"
    apply_events(batch(("N", "7")), NULL_OBSERVER, Recorder(), connected)  # after batches the service missed
    assert registry.get_sample_value("connected") == 7
    apply_events(batch(("N", "x")), NULL_OBSERVER, Recorder(), connected)  # malformed: ignored
    assert registry.get_sample_value("connected") == 7
    connected.reset()  # Mosquitto restarted: its connections are gone without a disconnect each
    assert registry.get_sample_value("connected") == 0


def test_a_device_refused_in_a_loop_is_a_few_log_lines_and_every_denial_counted():
    """A device reconnecting with a wrong password 1,000 times wrote 1,000 mqtt_auth_refused lines."""
    denials = Recorder()
    payload = batch(*[("C", "cam-9", "10.0.0.9", "0", "auth_bad_password")] * 1000,
                    *[("A", "cam-9", "$aws/things/x/shadow", "publish_denied")] * 1000)
    with capture_logs() as logs:
        assert apply_events(payload, NULL_OBSERVER, denials, connections()) == 2000
    assert len(denials.calls) == 2000
    events = [entry["event"] for entry in logs]
    assert events.count("mqtt_auth_refused") <= 10 and events.count("mqtt_publish_refused") <= 10


def test_records_carry_the_time_of_the_t_record_before_them():
    observer, denials = Recorder(), Recorder()
    payload = batch(("T", "1700000000123"), ("S", "cam-1", "5", "t"), ("C", "cam-2", "", "0", "auth_bad_password"),
                    ("T", "1700000000124"), ("R", "cam-1", "c"), ("T", "not a time"), ("D", "cam-1"))
    assert apply_events(payload, observer, denials, connections()) == 4  # the T records are no events
    assert observer.calls == [("sent", "cam-1", "t", 5, 1700000000.123), ("connect", "cam-2", None, False, 1700000000.123),
                              ("received", "cam-1", "c", 1700000000.124), ("disconnect", "cam-1")]
    assert denials.calls == [("denial", "cam-2", "auth_bad_password", 1700000000.123)]


def test_batch_numbers_go_to_the_handover_and_counts_are_told_once_per_batch():
    """Publishes dropped for the rate (L) and reports answered by the broker (O) come as one count
    per client or thing and batch: a record each was 285,000 a second from 10 flooding devices."""
    from iotdefender.brokers.mosquitto.handover import Handover

    class Numbers(Handover):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[tuple[int, int]] = []

        def events(self, instance: int, number: int) -> int:
            self.seen.append((instance, number))
            return super().events(instance, number)

    denials, numbers = Recorder(), Numbers()
    payload = batch(("Q", "4000000000", "17"), ("T", "1700000000000"), ("O", "cam-9", "250"), ("O", "cam-8", "x"), ("U", "cam-5", "3"),
                    ("L", "cam-7", "6000"), ("L", "cam-6", ""))
    assert apply_events(payload, NULL_OBSERVER, denials, connections(), numbers) == 5  # Q and T are no events
    assert numbers.seen == [(4_000_000_000, 17)]
    assert denials.calls == [("answered", "cam-9", "Throttled", 250), ("answered", "cam-5", "ServiceUnavailable", 3),
                             ("throttled", "cam-7", 6000)]  # malformed counts: ignored
