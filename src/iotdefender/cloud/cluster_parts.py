"""Cloud window parts kept in PostgreSQL until their window is closed (cluster mode).

A detect node acks a broker node's part of a device's window when it receives it, but closes the
window only ``grace`` after its end. Held in memory alone, the parts of the window open at a crash
died with the node: its successor closed that window without them (a partial or missing
datapoint). So every part is written here, in a transaction with its partition's fence checked,
before it is acked; closing a window deletes its parts. A successor loads what is left with the
partition.

Closing is recorded too (``cluster_cloud_progress``): a window is closed in several transactions
(chunks of things in name order, cloud/service.py), each advancing its partitions' mark to
(window, last thing of the chunk) with the datapoints it stores; a last transaction marks the
window closed for every thing (``through_thing`` NULL) and deletes the parts of the windows before
it. A successor resumes right after the mark: no window, nor a thing's share of one, is stored
twice, and every window after it is closed, with every part received before the ack.

The parts of the window that last transaction closed stay until the next window is closed
(``seen_window`` names it): who saw which device in it. Without them a successor closing an
incomplete window (a broker node killed) could not tell a device that moved off the missing
publisher (its part here is only the rest of its window: no datapoint) from one that was never on
it (its part is all of it), and gave every device with a connection attempt in that window no
datapoint, new devices too. The cost is rows, not writes: the table holds two windows' parts
instead of one. A release before this one ignores them (closed by the mark) and deletes them with
the next window it closes; a window it closed names no ``seen_window``, so none is assumed.

The publishers' ends of window (cloud/window_ends.py) are kept beside the parts, in the same
transaction (each publisher's latest per partition), so a successor knows whose parts it waits
for; closing a window deletes those that can no longer matter.

**A set per row** (``keep_sets``, ``cluster_cloud_part_sets``). A row per device's part was
PostgreSQL's work at every window's end: ~6 s of one transaction after another at 200,000
devices a node, which every report of the node waited for (bench/README.md, "What the reports
wait for at a window's end"). Once every live node reads them, a detect node keeps a broker node's
parts of one window a set per row instead, as its readers' batches bring them (one
``CloudWindowParts`` holds up to 1,000 devices). A set received again (a redelivery: the same
things) replaces its row; sets that overlap (a batch cut differently when redelivered) hold the
same parts, and the later row wins when they are read back. ``load`` reads both tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.cloud.aggregator import ClientWindow, pack, unpack
from iotdefender.cloud.window_ends import End
from iotdefender.store.rows import name_among, names_in_chunks, upsert, upsert_many
from iotdefender.store.schema import cluster_cloud_connections as connections_table
from iotdefender.store.schema import cluster_cloud_ends as ends_table
from iotdefender.store.schema import cluster_cloud_part_sets as sets_table
from iotdefender.store.schema import cluster_cloud_parts as parts_table
from iotdefender.store.schema import cluster_cloud_progress as progress_table


class PartOfWindow(Protocol):
    """What is kept of a broker node's part of one device's window: a ``StoredPart``, or a
    received message as it is (at a window's end a detect node keeps 200,000 devices' parts at a
    time; a copy of each cost as much as the rest of its keeping on this process, and every
    report waits for this process's turns then)."""

    @property
    def window(self) -> int: ...
    @property
    def thing(self) -> str: ...
    @property
    def node(self) -> str: ...
    @property
    def part(self) -> ClientWindow: ...


@dataclass(frozen=True)
class StoredPart:
    """One broker node's part of one device's window, as kept."""

    window: int
    thing: str
    node: str
    part: ClientWindow


@dataclass(frozen=True)
class Mark:
    """How far a partition's windows are closed: every window before ``window``, and ``window``
    itself for the things named up to ``through`` (None: for every thing)."""

    window: int
    through: str | None

    def closed(self, window: int, thing: str) -> bool:
        return closed_for(self.closed_in(window), thing)

    def closed_in(self, window: int) -> bool | Callable[[str], bool]:
        """``closed`` for every thing of ``window`` at once (True: all, False: none), or per thing
        in the window closed up to ``through``."""
        if window != self.window:
            return window < self.window
        through = self.through
        if through is None:
            return True
        return lambda thing: thing <= through


def closed_for(closed: bool | Callable[[str], bool], thing: str) -> bool:
    """A ``Mark.closed_in`` answer (for all things, or per thing) for one thing."""
    return closed if isinstance(closed, bool) else closed(thing)


def keep(conn: Connection, partition: int, parts: Iterable[PartOfWindow]) -> None:
    """Store parts a row each (a redelivered one replaces its copy: same window, thing and broker
    node): what the release before reads, so kept this way while one of its nodes lives."""
    # One statement may not touch a row twice: a part handed over twice in the batch keeps its last.
    latest = {(p.window, p.thing, p.node): p.part for p in parts}
    if not latest:
        return
    if conn.dialect.name == "postgresql":
        # One statement over arrays: a row per device's part, at every window's end, and
        # SQLAlchemy's statement for a list of rows cost this process 30-45 µs a part and the
        # server 1.5-2 times its CPU now (bench/README.md, "Cloud-side parts at fleet size").
        windows, things, nodes = zip(*latest)
        conn.exec_driver_sql(_KEEP_ARRAYS, (partition, list(windows), list(things), list(nodes),
                                            [pack(part) for part in latest.values()]))
        return
    stmt = upsert(conn, parts_table)  # cluster mode runs on PostgreSQL; the functions run on SQLite too
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[parts_table.c.partition, parts_table.c.window_index, parts_table.c.thing, parts_table.c.node],
        set_={"part": stmt.excluded.part}),
        [{"partition": partition, "window_index": window, "thing": thing, "node": node, "part": pack(part)}
         for (window, thing, node), part in latest.items()])


_KEEP_ARRAYS = (
    "INSERT INTO cluster_cloud_parts (partition, window_index, thing, node, part) "
    "SELECT %s, * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bytea[]) "
    "ON CONFLICT (partition, window_index, thing, node) DO UPDATE SET part = excluded.part")


class _ThingPart(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One device's part in a kept set."""

    thing: str
    part: ClientWindow


_SET_ENCODER = msgspec.msgpack.Encoder()
#: The most parts in one row: a reader's batch (256 messages of up to 1,000 parts) of one broker
#: node and window would otherwise be one row of tens of MB, rewritten whole when received again.
SET_MOST = 10_000
_SET_DECODER = msgspec.msgpack.Decoder(list[_ThingPart])


def keep_sets(conn: Connection, partition: int, parts: Iterable[PartOfWindow]) -> None:
    """Store parts a set per (window, broker node) per row (the module docstring): a set received
    again, the same things, replaces its row."""
    sets: dict[tuple[int, str], dict[str, ClientWindow]] = {}
    for p in parts:
        sets.setdefault((p.window, p.node), {})[p.thing] = p.part  # a part twice in one batch: its last
    if not sets:
        return
    rows = []
    for (window, node), by_thing in sets.items():
        things = list(by_thing)
        for start in range(0, len(things), SET_MOST):
            chosen = things[start:start + SET_MOST]
            digest = hashlib.blake2b("\n".join(sorted(chosen)).encode(), digest_size=16).digest()
            rows.append({"partition": partition, "window_index": window, "node": node, "things_digest": digest,
                         "parts": _SET_ENCODER.encode([_ThingPart(thing, by_thing[thing]) for thing in chosen])})
    stmt = upsert(conn, sets_table)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[sets_table.c.partition, sets_table.c.window_index, sets_table.c.node,
                        sets_table.c.things_digest],
        set_={"parts": stmt.excluded.parts}), rows)


def keep_ends(conn: Connection, partition: int, ends: Iterable[End]) -> None:
    """Store publishers' ends (a publisher's latest replaces an earlier one, never a later one)."""
    rows = [{"partition": partition, "node": e.node, "began_window": e.began, "since_window": e.since,
             "window_index": e.window, "last": e.last, "hosts": e.hosts} for e in ends]
    if not rows:
        return
    stmt = upsert(conn, ends_table)
    conn.execute(stmt.on_conflict_do_update(
        index_elements=[ends_table.c.partition, ends_table.c.node],
        set_={"began_window": stmt.excluded.began_window, "since_window": stmt.excluded.since_window,
              "window_index": stmt.excluded.window_index, "last": stmt.excluded.last, "hosts": stmt.excluded.hosts},
        where=ends_table.c.window_index <= stmt.excluded.window_index), rows)


def load_ends(conn: Connection, partition: int) -> list[End]:
    """The partition's publishers' latest ends."""
    return [End(node, int(began), int(since), int(window), bool(last), bool(hosts))
            for node, began, since, window, last, hosts in conn.execute(
        sa.select(ends_table.c.node, ends_table.c.began_window, ends_table.c.since_window, ends_table.c.window_index,
                  ends_table.c.last, ends_table.c.hosts)
        .where(ends_table.c.partition == partition).order_by(ends_table.c.node))]


def forget_ends(conn: Connection, before: Mapping[int, int]) -> None:
    """Delete ends older than a window per partition ({partition: window}): they expect nothing of it."""
    by_window: dict[int, list[int]] = {}
    for partition, window in before.items():
        by_window.setdefault(window, []).append(partition)
    for window, partitions in sorted(by_window.items()):  # one statement a round, as a round closes one window
        conn.execute(ends_table.delete().where(ends_table.c.partition.in_(sorted(partitions)),
                                               ends_table.c.window_index < window))


@dataclass(frozen=True)
class Seen:
    """Who saw which device in a window closed for all things: each thing's publishers."""

    window: int
    publishers: dict[str, frozenset[str]]


def load(conn: Connection, partition: int) -> tuple[Mark | None, list[StoredPart], Seen | None, list[StoredPart]]:
    """The partition's mark (None: no window of it was ever closed), its parts not closed yet, who
    saw whom in the window before the first one left to close (None: not kept), and the parts of
    a window closed in part for the things it was closed for: what they say of their devices'
    connections was to be recorded with the window's last transaction, which never came."""
    found = conn.execute(sa.select(progress_table.c.window_index, progress_table.c.through_thing,
                                   progress_table.c.seen_window)
                         .where(progress_table.c.partition == partition)).first()
    mark = Mark(int(found[0]), found[1]) if found is not None else None
    # The window the next one closed follows: the mark's, or the one before a window closed in part.
    before = None if mark is None else mark.window if mark.through is None else mark.window - 1
    kept_seen = found is not None and found[2] is not None and int(found[2]) == before
    parts: list[StoredPart] = []
    closed_in_part: list[StoredPart] = []
    seen: dict[str, set[str]] = {}
    for (window, thing, node), part in _kept(conn, partition, before).items():
        if mark is None or not mark.closed(window, thing):
            parts.append(StoredPart(window, thing, node, _window(part)))
        elif mark.through is not None and window == mark.window:
            closed_in_part.append(StoredPart(window, thing, node, _window(part)))
        elif kept_seen and window == before:
            seen.setdefault(thing, set()).add(node)
    if not kept_seen or before is None:
        return mark, parts, None, closed_in_part
    return mark, parts, Seen(before, {thing: frozenset(nodes) for thing, nodes in seen.items()}), closed_in_part


def _window(part: bytes | ClientWindow | None) -> ClientWindow:
    return part if isinstance(part, ClientWindow) else unpack(part)  # type: ignore[arg-type]


def _kept(conn: Connection, partition: int, before: int | None
          ) -> dict[tuple[int, str, str], bytes | ClientWindow | None]:
    """Every part kept of the partition, in (window, thing, node) order: the rows of a part each
    (a release before writes them) first, then the sets in the order they were written (a later
    copy of a part wins). A part as kept (bytes), decoded (from a set), or None (of the seen
    window or one before it, whose parts are not needed)."""
    kept: dict[tuple[int, str, str], bytes | ClientWindow | None] = {}
    # Of the seen window (and any before it) only who saw whom is read, not the parts themselves:
    # at a partition's share of a large fleet that is most of the rows. All rows are fetched at
    # once: iterating the result fetched them one by one.
    part_column = (parts_table.c.part if before is None else
                   sa.case((parts_table.c.window_index <= before, sa.null()), else_=parts_table.c.part))
    for window, thing, node, part in conn.execute(
            sa.select(parts_table.c.window_index, parts_table.c.thing, parts_table.c.node, part_column)
            .where(parts_table.c.partition == partition)).all():
        kept[(int(window), thing, node)] = part
    for window, node, data in conn.execute(
            sa.select(sets_table.c.window_index, sets_table.c.node, sets_table.c.parts)
            .where(sets_table.c.partition == partition).order_by(sets_table.c.id)).all():
        for one in _SET_DECODER.decode(data):
            kept[(int(window), one.thing, node)] = one.part
    return dict(sorted(kept.items()))


def advance(conn: Connection, marks: Mapping[int, Mark]) -> None:
    """Record how far partitions' windows are closed ({partition: mark}), in the closing transaction
    (a mark of an earlier window than the one recorded changes nothing); a mark for a whole window
    also deletes the partition's parts of earlier windows and names it the seen window."""
    if not marks:
        return
    stmt = upsert(conn, progress_table)
    # Never back to an earlier window (a window closed in part, then the mark of the ones before it).
    # A window closed in part keeps the seen window named before (the one before it).
    conn.execute(stmt.on_conflict_do_update(index_elements=[progress_table.c.partition],
                                            set_={"window_index": stmt.excluded.window_index,
                                                  "through_thing": stmt.excluded.through_thing,
                                                  "seen_window": sa.func.coalesce(stmt.excluded.seen_window,
                                                                                  progress_table.c.seen_window)},
                                            where=progress_table.c.window_index <= stmt.excluded.window_index),
                 [{"partition": p, "window_index": m.window, "through_thing": m.through,
                   "seen_window": m.window if m.through is None else None}
                  for p, m in sorted(marks.items())])
    whole = [(p, m.window) for p, m in sorted(marks.items()) if m.through is None]
    for partition, window in whole:  # the window's own parts stay: who saw whom in it
        for table in (parts_table, sets_table):
            conn.execute(table.delete().where(table.c.partition == partition, table.c.window_index < window))


#: Where a device's connection is: (broker node, address, connected since).
DeviceConnection = tuple[str, str, float]


def record_connections(conn: Connection, changes: Mapping[str, DeviceConnection | None],
                       partition_of: Callable[[str], int]) -> None:
    """Record where devices' connections are ({thing: (node, address, since)}, None: it has none).
    Through the driver (``upsert_many``): a node's first windows record every connected device."""
    upsert_many(conn, connections_table, "thing", ("thing", "partition", "node", "address", "since"),
                [(thing, partition_of(thing), value[0], value[1][:64], value[2])
                 for thing, value in sorted(changes.items()) if value is not None])
    for chunk in names_in_chunks(sorted(thing for thing, value in changes.items() if value is None)):
        conn.execute(connections_table.delete().where(name_among(conn, connections_table.c.thing, chunk)))


def forget_connections(conn: Connection, partitions: Sequence[int]) -> None:
    """Delete what is recorded of some partitions' connections (it can no longer be trusted)."""
    if partitions:
        conn.execute(connections_table.delete().where(connections_table.c.partition.in_(list(partitions))))


def load_connections(conn: Connection, partition: int) -> dict[str, DeviceConnection]:
    """Where the partition's devices' connections are, as last recorded."""
    return {thing: (node, address, float(since)) for thing, node, address, since in conn.execute(
        sa.select(connections_table.c.thing, connections_table.c.node, connections_table.c.address,
                  connections_table.c.since).where(connections_table.c.partition == partition))}
