"""Partitioning must agree across processes (Python's ``hash`` would not) and spread things evenly."""

import os
import subprocess
import sys

from iotdefender.cluster.partitions import (PARTITION_COUNT, assignment, partition_of, rendezvous_assignment,
                                             rendezvous_owner)

NAMES = [f"thing-{i}" for i in range(2000)]


def test_partition_is_the_same_in_another_process_with_another_hash_seed():
    code = ("from iotdefender.cluster.partitions import partition_of;"
            f"print(' '.join(str(partition_of(f'thing-{{i}}')) for i in range({len(NAMES)})))")
    other = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "12345"},
                           capture_output=True, text=True, check=True).stdout.split()
    assert [int(p) for p in other] == [partition_of(n) for n in NAMES]


def test_things_spread_over_every_partition():
    counts = [0] * PARTITION_COUNT
    for name in NAMES:
        counts[partition_of(name)] += 1
    expected = len(NAMES) / PARTITION_COUNT
    assert min(counts) > expected * 0.4 and max(counts) < expected * 1.8


def test_plain_rendezvous_covers_every_partition_once_and_moves_only_the_newcomers_share_on_join():
    before = assignment(["a", "b", "c"], even=False)
    assert sorted(p for share in before.values() for p in share) == list(range(PARTITION_COUNT))
    after = assignment(["a", "b", "c", "d"], even=False)
    moved = {p for node in "abc" for p in before[node] - after[node]}
    assert moved == after["d"]  # only what the newcomer wins moves
    assert all(rendezvous_owner(p, ["c", "b", "a"]) == rendezvous_owner(p, ["a", "b", "c"]) for p in range(64))


def test_the_even_split_gives_every_member_the_same_share_within_one():
    for count in range(1, 12):
        members = [f"node-{count}-{i}" for i in range(count)]
        shares = assignment(members)
        assert sorted(p for share in shares.values() for p in share) == list(range(PARTITION_COUNT))
        sizes = sorted(len(share) for share in shares.values())
        assert sizes[-1] - sizes[0] <= 1, (count, sizes)
        # The same from the same members in any order, in any process (no salted hash involved).
        assert assignment(list(reversed(members))) == shares


def test_plain_rendezvous_is_uneven_and_what_an_older_member_computes():
    """The split of releases before the even one: each partition to its rendezvous owner."""
    members = [f"node-7-{i}" for i in range(7)]
    plain = assignment(members, even=False)
    assert all(rendezvous_owner(p, members) in {m for m, share in plain.items() if p in share}
               for p in range(PARTITION_COUNT))
    assert rendezvous_assignment(members) == plain
    sizes = sorted(len(share) for share in plain.values())
    assert sizes[-1] - sizes[0] > 1  # why the even split exists (this member list: 5 to 13)


def test_the_even_split_moves_little_when_a_member_joins_or_leaves():
    """Bounded loads move a little more than the minimum: summed over joins of 1 to 8 members and
    departures, within 1.5x of what must move (the newcomer's share, the departed's share)."""
    must, moved = 0, 0
    for trial in range(20):
        names = [f"n{trial}-{i}" for i in range(9)]
        for count in range(1, 9):
            before, after = assignment(names[:count]), assignment(names[:count + 1])
            owner = {p: m for m, share in before.items() for p in share}
            must += len(after[names[count]])
            moved += sum(p not in after[owner[p]] for p in range(PARTITION_COUNT))
            if count > 1:
                gone = names[trial % count]
                left = assignment([n for n in names[:count] if n != gone])
                must += len(before[gone])
                moved += sum(p not in left.get(owner[p], ()) for p in range(PARTITION_COUNT))
    assert must <= moved <= 1.5 * must
