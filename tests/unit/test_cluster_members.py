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
    for _ in range(4):  # an election: puts and reads without an answer; every entry expired meanwhile
        view.failed()
    assert view.read([], now=9.0) == ["a", "b", "c"]  # not yet: the others re-put first
    assert view.read(["b", "d"], now=9.5) == ["a", "b", "c", "d"]  # a newcomer is added at once
    assert view.read(["a", "b", "d"], now=13.9) == ["a", "b", "c", "d"]
    assert view.read(["a", "b", "d"], now=14.0) == ["a", "b", "d"]  # c never came back: dropped


def test_two_requests_without_an_answer_are_an_outage_however_long_their_timeouts_took():
    view = MemberView("a", settle_s=5.0)
    view.read(["a", "b"], now=0.0)
    view.failed()  # a read that waited until its timeout
    view.failed()  # and a put
    assert view.read(["a"], now=4.5) == ["a", "b"]  # b's entry expired meanwhile: b re-puts first


def test_one_slow_request_is_not_an_outage_and_does_not_delay_dropping_a_dead_node():
    view = MemberView("a", settle_s=5.0)
    view.read(["a", "b", "c"], now=0.0)
    view.failed()  # a put that timed out once on a loaded machine
    view.answered(now=2.0)
    view.failed()  # another, later, after an answer: not two in a row
    assert view.read(["a", "b"], now=6.0) == ["a", "b"]  # c was killed: dropped one TTL after its last put
