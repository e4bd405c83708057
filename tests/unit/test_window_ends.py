"""What publishers' ends of window say of a partition's window (cloud/window_ends.py)."""

from __future__ import annotations

from iotdefender.cloud.window_ends import End, Verdict, WindowEnds, horizon_for

P = 5


def ends(*given: End, horizon: int = 1) -> WindowEnds:
    held = WindowEnds(horizon)
    held.replace(P, given)
    return held


def test_a_window_is_complete_when_every_expected_publisher_vouches_for_it():
    held = ends(End("a", 0, 1, 10), End("b", 0, 4, 10))
    assert held.verdict(P, 10, waited_out=False) is Verdict.COMPLETE
    assert held.verdict(P, 4, waited_out=False) is Verdict.COMPLETE
    assert ends().verdict(P, 10, waited_out=False) is Verdict.COMPLETE  # nobody ever ended a window: as before


def test_a_window_a_publisher_lost_is_incomplete_at_once():
    held = ends(End("a", 0, 1, 10), End("b", 0, 8, 10))
    assert held.verdict(P, 7, waited_out=False) is Verdict.INCOMPLETE  # b's run starts after it
    assert held.short(P, 7) == ["b"]


def test_a_window_waits_for_an_expected_publisher_then_is_incomplete():
    held = ends(End("a", 0, 1, 11), End("b", 0, 1, 9))
    assert held.verdict(P, 10, waited_out=False) is Verdict.WAIT
    assert held.short(P, 10) == ["b"]
    assert held.verdict(P, 10, waited_out=True) is Verdict.INCOMPLETE
    assert held.verdict(P, 11, waited_out=False) is Verdict.COMPLETE  # silent beyond the horizon: not expected
    assert ends(End("b", 0, 1, 9), horizon=3).verdict(P, 12, waited_out=False) is Verdict.WAIT


def test_a_publisher_that_began_after_a_window_did_not_lose_it():
    held = ends(End("a", 1, 1, 10), End("new", 9, 9, 9))
    assert held.verdict(P, 8, waited_out=False) is Verdict.COMPLETE
    assert ends(End("a", 1, 1, 10), End("lost", 1, 9, 9)).verdict(P, 8, waited_out=False) is Verdict.INCOMPLETE


def test_a_publisher_that_said_it_stopped_is_not_waited_for():
    held = ends(End("a", 0, 1, 10), End("b", 0, 1, 9, last=True))
    assert held.verdict(P, 10, waited_out=False) is Verdict.COMPLETE


def test_an_older_end_read_again_does_not_take_a_publisher_back():
    held = ends(End("b", 0, 1, 10))
    held.record(P, End("b", 0, 1, 9))  # redelivered after the later one was kept
    assert held.verdict(P, 10, waited_out=False) is Verdict.COMPLETE
    held.record(P, End("b", 0, 11, 11))  # it lost window 10's parts after all? No: 11's run only
    assert held.verdict(P, 11, waited_out=False) is Verdict.COMPLETE
    assert held.verdict(P, 10, waited_out=False) is Verdict.INCOMPLETE


def test_the_horizon_covers_the_wait():
    assert horizon_for(10.0, 300.0) == 1
    assert horizon_for(10.0, 1.0) == 10


def test_ends_of_publishers_gone_are_forgotten_once_they_expect_nothing():
    held = ends(End("a", 0, 1, 10), End("gone", 0, 1, 7), horizon=2)
    held.prune(P, 9)  # windows 9 and later: "gone" (7) is expected in 9
    assert held.short(P, 9) == ["gone"]
    held.prune(P, 10)
    assert held.short(P, 9) == []
