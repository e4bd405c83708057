"""The member view across a key-value outage: no member dropped on a list read just after it."""

from __future__ import annotations

from iotdefender.cluster.members import MemberView


def test_a_list_is_taken_as_read_outside_an_outage_and_always_holds_the_node_itself():
    view = MemberView("a", settle_s=5.0)
    assert view.read(["a", "b", "c"], now=0.0) == ["a", "b", "c"]
    assert view.read(["b"], now=1.0) == ["a", "b"]  # c expired (killed): dropped at once; a is alive
    assert view.read(["a", "b"], now=2.0, leaving=True) == ["b"]


def test_after_an_outage_members_whose_entries_expired_are_kept_until_the_list_settles():
    view = MemberView("a", settle_s=5.0)
    view.read(["a", "b", "c"], now=0.0)
    for tick in (3.0, 4.0, 5.0, 6.0, 7.0, 8.0):  # the bucket answered nothing; every entry expired meanwhile
        view.failed(sent=tick)
    assert view.read([], now=9.0) == ["a", "b", "c"]  # not yet: the others re-put first
    assert view.read(["b", "d"], now=9.5) == ["a", "b", "c", "d"]  # a newcomer is added at once
    assert view.read(["a", "b", "d"], now=13.9) == ["a", "b", "c", "d"]
    assert view.read(["a", "b", "d"], now=14.0) == ["a", "b", "d"]  # c never came back: dropped


def test_one_slow_request_is_not_an_outage_and_does_not_delay_dropping_a_dead_node():
    view = MemberView("a", settle_s=5.0)
    view.read(["a", "b", "c"], now=0.0)
    view.failed(sent=1.0)  # a put that timed out once on a loaded machine
    view.answered(now=2.0)
    assert view.read(["a", "b"], now=6.0) == ["a", "b"]  # c was killed: dropped one TTL after its last put


def test_an_outage_is_measured_from_the_first_failed_request_sent_not_from_its_timeout():
    view = MemberView("a", settle_s=5.0)
    view.read(["a", "b"], now=0.0)
    # An election from 1.0 to 4.5: the read sent at 1.0 failed only at 3.5 (its timeout), the puts
    # sent at 3.6 and 4.0 failed too; the bucket answers at 4.5 without b, whose entry expired.
    view.failed(sent=3.6)
    view.failed(sent=1.0)
    view.failed(sent=4.0)
    assert view.read(["a"], now=4.5) == ["a", "b"]  # an outage of 3.5 s: b re-puts first
