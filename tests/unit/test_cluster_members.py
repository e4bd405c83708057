"""The member view across a key-value outage: no member dropped on a list read during or just after it."""

from __future__ import annotations

from iotdefender.cluster.members import MemberView, member_entry, reaches_database, splits_evenly


def test_a_list_is_taken_as_read_outside_an_outage_and_always_holds_the_node_itself():
    view = MemberView("a", settle_s=5.0)
    assert view.read(["a", "b", "c"], now=0.0) == ["a", "b", "c"]
    assert view.read(["b"], now=1.0) == ["a", "b"]  # c expired (killed): dropped at once; a is alive
    assert view.read(["a", "b"], now=2.0, leaving=True) == ["b"]


def test_after_an_outage_members_whose_entries_expired_are_kept_until_the_list_settles():
    view = MemberView("a", settle_s=5.0)
    view.read(["a", "b", "c"], now=0.0)
    for _ in range(4):  # an election: this node's puts get no answer; every entry expires meanwhile
        view.put_failed()
    view.put_answered(now=9.0)
    assert view.read([], now=9.0) == ["a", "b", "c"]  # not yet: the others re-put first
    assert view.read(["b", "d"], now=9.5) == ["a", "b", "c", "d"]  # a newcomer is added at once
    assert view.read(["a", "b", "d"], now=13.9) == ["a", "b", "c", "d"]
    assert view.read(["a", "b", "d"], now=14.0) == ["a", "b", "d"]  # c never came back: dropped


def test_lists_read_while_puts_still_fail_drop_nobody():
    """A listing can be answered while puts are not (test_cluster_nats3): such answers do not end
    the outage, however many there are and however long the puts keep failing."""
    view = MemberView("a", settle_s=5.0)
    view.read(["a", "b"], now=0.0)
    for second in range(1, 12):
        view.put_failed()
        assert view.read(["a"] if second > 5 else ["a", "b"], now=float(second)) == ["a", "b"]
    view.put_answered(now=12.0)
    assert view.read(["a"], now=16.9) == ["a", "b"]  # b re-puts within a tick of the bucket taking puts
    assert view.read(["a"], now=17.0) == ["a"]  # it did not: it died meanwhile


def test_one_slow_put_is_not_an_outage_and_does_not_delay_dropping_a_dead_node():
    view = MemberView("a", settle_s=5.0)
    view.read(["a", "b", "c"], now=0.0)
    view.put_failed()  # a put that timed out once on a loaded machine
    view.put_answered(now=2.0)
    view.put_failed()  # another, later, after an answer: not two in a row
    assert view.read(["a", "b"], now=6.0) == ["a", "b"]  # c was killed: dropped one TTL after its last put


def test_a_member_entry_says_whether_its_node_reaches_the_database_or_nothing():
    assert reaches_database(member_entry(True)) is True
    assert reaches_database(member_entry(False)) is False
    # A node that says nothing of its database, as every node of a release before the field (its
    # entry was empty): the others count it as reaching the database, as that release counted every member.
    assert reaches_database(member_entry(None)) is None and reaches_database(b"") is None
    for unreadable in (b"{", b"[]", b'{"reaches_database": "yes"}', b'{"other": true}'):
        assert reaches_database(unreadable) is None


def test_a_member_entry_says_its_node_splits_evenly_and_an_older_ones_does_not():
    assert all(splits_evenly(member_entry(reach)) for reach in (True, False, None))
    # Entries of releases before the even split: empty, or only the database field.
    for older in (b"", b'{"reaches_database": true}', b'{"reaches_database": false}', b"{", b'{"splits_evenly": 1}'):
        assert not splits_evenly(older)
