"""Partitioning must agree across processes (Python's ``hash`` would not) and spread things evenly."""

import os
import subprocess
import sys

from iotdefender.cluster.partitions import PARTITION_COUNT, assignment, partition_of, rendezvous_owner

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


def test_assignment_covers_every_partition_once_and_moves_little_on_join():
    before = assignment(["a", "b", "c"])
    assert sorted(p for share in before.values() for p in share) == list(range(PARTITION_COUNT))
    after = assignment(["a", "b", "c", "d"])
    moved = {p for node in "abc" for p in before[node] - after[node]}
    assert moved == after["d"]  # only what the newcomer wins moves
    assert all(rendezvous_owner(p, ["c", "b", "a"]) == rendezvous_owner(p, ["a", "b", "c"]) for p in range(64))
