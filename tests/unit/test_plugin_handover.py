"""What the Mosquitto plugin handed the service and the service never got: counted from the
numbers the plugin puts on its batches (handover.py)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from iotdefender.brokers.mosquitto.handover import Handover


def counted(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_reports_missing_between_two_batches_are_counted():
    handover, lost_before = Handover(), counted("iotdefender_broker_reports_lost_total")
    assert handover.reports(instance=1, number=0, before=0, count=3) == 0  # the first batch seen: nothing to compare
    assert handover.reports(instance=1, number=1, before=3, count=2) == 0
    assert handover.reports(instance=1, number=5, before=12, count=1) == 7  # batches holding 7 reports were dropped
    assert handover.reports(instance=1, number=6, before=13, count=1) == 0
    assert counted("iotdefender_broker_reports_lost_total") - lost_before == 7


def test_a_new_plugin_instance_starts_afresh_and_the_counter_wraps():
    handover = Handover()
    handover.reports(instance=1, number=50, before=100, count=1)
    assert handover.reports(instance=2, number=0, before=0, count=1) == 0  # Mosquitto restarted: its counters too
    handover.reports(instance=3, number=9, before=2**32 - 2, count=2)
    assert handover.reports(instance=3, number=10, before=0, count=1) == 0  # 2^32 - 2 + 2 wraps to 0
    assert handover.reports(instance=3, number=12, before=3, count=1) == 2


def test_event_batches_missing_are_counted():
    handover, lost_before = Handover(), counted("iotdefender_broker_event_batches_lost_total")
    assert handover.events(5, 0) == 0
    assert handover.events(5, 1) == 0
    assert handover.events(5, 4) == 2
    assert handover.events(6, 0) == 0
    assert counted("iotdefender_broker_event_batches_lost_total") - lost_before == 2


def test_the_batches_read_are_told_as_the_numbers_expected_next():
    """What the service tells the plugin it has read (a TAKEN frame): the batch after the last one
    of each kind, batches lost on the way included (they will never be read)."""
    handover = Handover()
    assert handover.next_batches() is None  # nothing read yet: nothing to tell
    handover.events(4, 0)
    assert handover.next_batches() == (4, 0, 1)
    handover.reports(instance=4, number=0, before=0, count=2)
    handover.reports(instance=4, number=3, before=9, count=1)  # 1 and 2 lost
    assert handover.next_batches() == (4, 4, 1)
    handover.reports(instance=4, number=2**32 - 1, before=20, count=1)
    assert handover.next_batches() == (4, 0, 1)  # wraps as the plugin's counter does
    handover.events(8, 5)  # Mosquitto restarted: the new instance's numbers only
    assert handover.next_batches() == (8, 0, 6)
