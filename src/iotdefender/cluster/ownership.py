"""Which detect node owns which partition: leases in a NATS key-value bucket, compare-and-set + TTL.

nats-py 2.16 (the newest release) has no client support for consumer priority groups or pinned
clients (ADR-42, server 2.11+): nothing in ``nats.js`` sends a pull request's ``group``/``id`` or
reads ``Nats-Pin-Id``. So ownership uses what nats-py does support, the key-value bucket:

- membership: each node ``put``s ``iotdefender-members/<node>`` every tick; the bucket's max age
  (``Topology.lease_ttl_s``) removes the entry of a node that stopped (kill -9, partitioned away);
  its value says whether the node steadily reaches the database (members.py), which decides who
  stands aside for whom (``Ownership._aside_now``), and that it splits the partitions evenly;
- assignment: every node computes the same owner for every partition from the live member list
  (rendezvous hashing with bounded loads, partitions.py; plain rendezvous while a member of a
  release before the even split lives, ``Ownership._choose_split``), with no messages exchanged;
- leases: a node takes ``iotdefender-leases/p.<n>`` with ``create`` (succeeds only if absent),
  renews it with ``update(last=revision)`` (compare-and-set: fails if anyone else wrote it), and
  gives it up with ``delete(last=revision)`` after its reader stopped and acked. The bucket's max
  age expires a lease that is not renewed, so a dead node's partitions are free after the TTL.

Safety (two nodes never both read a partition): a node counts its lease valid only
until ``time sent + TTL - margin`` of its last successful renewal, measured on its own monotonic
clock from *before* the request left; the server keeps the entry until ``time stored + TTL``, which
is later. So the old owner stops before anyone else can ``create`` the key. Clocks that run at
wildly different rates or a process paused between check and commit could still break this, which
is why the acquisition revision (with the bucket's epoch, ``token_epoch``) is also a fencing token
checked in the commit (fencing.py).

Losing the bucket's leader is not losing the lease. On R3, when the NATS server leading the bucket
dies, its Raft group answers nothing for 4-9 s (nats-server's election timeouts) — longer than the
lease. A renewal that fails because the bucket is *unavailable* (a timeout, no responders, 503) puts
the lease *in doubt* instead of letting it run out: the node keeps the partition — its reader
object, its alarm states in memory — since while the bucket has no quorum nobody can ``create`` the
key either. Its reader still pauses once the local validity runs out (``holds``), exactly when it
stopped before, so a node that is really cut off (the others take the partition on the majority
side) reads nothing the new owner reads; what it still writes outside the stream (a closing cloud
window) is refused by the PostgreSQL fence the new owner claimed. When the bucket answers again:
our revision is still there (renewed as usual), or someone else wrote the key (lost: the partition
is released), or the entry expired
meanwhile — then, if this node is still the partition's assigned owner, it creates the key again
and moves the fence from the old token to the new one with a compare-and-set (``retoken``): if
that succeeds nobody committed for the partition in between, so the reader resumes and the states
in memory stay as they are; if not, the partition is released as usual. A closed connection is not
"unavailable": the lease runs out on the local clock as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from prometheus_client import Counter
from nats.js.kv import KeyValue

from iotdefender.cancellation import cancel_and_wait
from iotdefender.cluster.database_reach import DatabaseReach
from iotdefender.cluster.members import MemberView, member_entry, reaches_database, splits_evenly
from iotdefender.cluster.partitions import assignment
from iotdefender.cluster.topology import Topology

log = structlog.get_logger("iotdefender.cluster")

#: Every change of this node's partitions; each acquisition claims a fence and loads states, so a
#: rate that stays up while nothing joins or leaves is churn (a database away for everyone was).
PARTITION_CHANGES = Counter("iotdefender_cluster_partition_changes",
                            "Partitions this detect node acquired, released, or saw expire", ["change"])
for _change in ("acquired", "released", "expired"):
    PARTITION_CHANGES.labels(_change)

#: Called when this node gains a partition (partition, fencing token) and when it must stop one.
Acquired = Callable[[int, int], Awaitable[None]]
Released = Callable[[int], Awaitable[None]]
#: Called when this node re-created its expired lease (partition, old token, new token): True if the
#: fence moved from old to new (nobody committed in between), False if the partition must be released.
Retokened = Callable[[int, int, int], Awaitable[bool]]

#: A key-value request that got no answer: the bucket is electing a leader, or the server routing
#: to it died. Not a compare-and-set conflict (an answer) and not a closed connection.
#: (While the client reconnects, requests are buffered and time out, or are refused at once.)
UNAVAILABLE = (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
               nats.js.errors.ServiceUnavailableError, nats.js.errors.NoStreamResponseError,
               nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError)


async def give_up(partition: int, old: int, new: int) -> bool:
    """The default ``Retokened``: a node that does not say how to move its fence releases a lease
    that had to be created again, and takes it afresh (claim, reload), as before leases were kept
    through elections. Never wrong; only slower."""
    return False


@dataclass
class Lease:
    token: int  # the fencing token for the tenure: the bucket's epoch + the revision of the create
    revision: int  # the latest revision (each renewal writes a new one)
    valid_until: float  # local monotonic time after which this node must consider it lost
    in_doubt: bool = False  # the last renewal got no answer: the bucket is unavailable (kept, not lost)
    vanished: bool = False  # seen expired on the server after an outage: any entry of ours is re-created
    lost: bool = False  # re-created but the fence could not move: release it (and its key)

    def valid(self, now: float) -> bool:
        """Whether this node may read and commit under the lease at ``now`` (its local validity)."""
        return not self.lost and self.valid_until > now

    def kept(self, now: float) -> bool:
        """Whether the lease is still this node's to keep: valid, or in doubt while the bucket is
        unavailable (its reader pauses and its states stay in memory until it is confirmed)."""
        return not self.lost and (self.in_doubt or self.valid_until > now)


#: Seconds the server keeps a key listing's consumer once its reader stopped (see ``bucket_keys``).
LISTING_CONSUMER_LINGER_S = 1.0
#: Listings tried when the server removed the listing's consumer under it (``bucket_entries``).
LISTING_ATTEMPTS = 3
#: Seconds a listing waits for entries that arrive after nats-py said the bucket had none.
LATE_ENTRIES_WAIT_S = 0.25


async def bucket_keys(kv: KeyValue) -> list[str]:
    """The keys of ``kv`` (none: an empty list), read without leaving a consumer behind
    (``bucket_entries``)."""
    return list(await bucket_entries(kv, values=False))


async def bucket_entries(kv: KeyValue, values: bool = True) -> dict[str, bytes]:
    """{key: value} of ``kv``'s entries (``values=False``: the keys only, every value ``b""``),
    read without leaving a consumer behind.

    Each listing reads through an ephemeral ordered consumer. nats-py's ``KeyValue.keys()`` creates
    it with an inactivity threshold of 5 minutes, so a detect node listing the members every tick
    kept ~300 idle consumers on the members' stream, and nats-server refused more than 1,000
    ("maximum consumers limit reached", 10026): from four detect nodes on, rebalance rounds failed.
    Here the server removes the consumer a second after the listing stopped reading.

    nats-py 2.16 also ends a listing before its first entry when the consumer's info says nothing
    is pending and nothing was delivered yet, which is what it says too when the server had
    already pushed every entry and none was read yet: an empty list while two members had put
    their keys (seen in the test of this function, and as nodes giving up all their partitions
    for a second). An end before any entry is therefore followed by a short wait for late entries.
    """
    for attempt in range(LISTING_ATTEMPTS):
        try:
            return await _listing(kv, values)
        except nats.js.errors.NotFoundError:
            # The listing's consumer is gone under it: the server removes one whose reader was
            # silent for a second (``LISTING_CONSUMER_LINGER_S``), which a node starved of CPU can
            # be (an operator's trial at load 25-35: the ownership rounds and the settings'
            # comparisons, both listings, failed with NotFoundError). A new listing reads it all.
            if attempt == LISTING_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


async def _listing(kv: KeyValue, values: bool) -> dict[str, bytes]:
    watcher = await kv.watchall(ignore_deletes=True, meta_only=not values,
                                inactive_threshold=LISTING_CONSUMER_LINGER_S)
    entries: dict[str, bytes] = {}
    try:
        async for entry in watcher:
            if entry is not None:
                entries[entry.key] = entry.value or b""
                continue
            if not entries:
                entries = await _late_entries(watcher)
            break
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):  # its consumer may be gone already
            await watcher.stop()
    return entries


async def _late_entries(watcher: KeyValue.KeyWatcher) -> dict[str, bytes]:
    """Entries that come after an early end: until the one with nothing pending after it, or a pause."""
    entries: dict[str, bytes] = {}
    while True:
        try:
            entry = await watcher.updates(timeout=LATE_ENTRIES_WAIT_S)
        except nats.errors.TimeoutError:
            return entries
        if entry is None:
            continue
        entries[entry.key] = entry.value or b""
        if entry.delta == 0:
            return entries


async def members_listed(list_once: Callable[[], Awaitable[dict[str, bytes]]],
                         known: Collection[str]) -> dict[str, bytes]:
    """The members bucket's entries; listed a second time when a member of ``known`` (the list
    in use) is missing, a member then dropped only if both listings miss it.

    A listing can miss a live member: entries that nats-py says come after an early end are
    waited for ``LATE_ENTRIES_WAIT_S`` at most, and on a loaded machine one may come later. A
    node that took such a listing for the members moved partitions towards a split without that
    member, and back a tick later (the likely cause of a rolling-upgrade test's failure in CI: a
    node switched to the even split for a round while a node of the release before lived, its
    leases all kept). A member that left (its key deleted, or expired) is missing from both
    listings: it is dropped in the same round."""
    entries = await list_once()
    if set(known) <= entries.keys():
        return entries
    return {**await list_once(), **entries}


def lease_key(partition: int) -> str:
    return f"p.{partition:04d}"


#: A fencing token is (the leases bucket's creation second << TOKEN_EPOCH_BITS) + the lease's
#: revision. Revisions restart at 1 when the bucket is created again (to change the lease TTL, or
#: after the JetStream store was lost), while the fences in PostgreSQL keep the old tokens: with
#: bare revisions every claim was refused as stale until the new revisions caught up (161 s of no
#: detection for tokens near 28,000 in a trial; after months, much longer). The creation time
#: puts every token of a newer bucket above every token of an older one as long as a bucket takes
#: fewer than 2**24 revisions a second (it takes about 100: 64 renewals and the members' puts per
#: tick), and stays below 2**63 (PostgreSQL's BIGINT) until far past the year 2100.
TOKEN_EPOCH_BITS = 24


def token_epoch(created: datetime.datetime | None) -> int:
    """The high part of the tokens of a leases bucket created at ``created`` (0 if unknown)."""
    return int(created.timestamp()) << TOKEN_EPOCH_BITS if created is not None else 0


#: Whether any of these other members (detect nodes) runs a release whose tokens are bare revisions
#: (28ec2af and older). Rolling upgrades: such a node cannot claim a partition whose fence an
#: epoch token raised (its claim is refused until it is upgraded), so while one lives this node
#: uses bare revisions too; once none is seen, the epoch for good (``Ownership._choose_tokens``).
BareTokenMembers = Callable[[list[str]], Awaitable[bool]]


class Ownership:
    """Keeps this node's share of the partitions, calling ``acquired``/``released`` as it changes."""

    def __init__(self, js: JetStreamContext, topology: Topology, node_id: str, acquired: Acquired,
                 released: Released, clock: Callable[[], float] = time.monotonic,
                 tick_s: float | None = None, safety_margin_s: float = 0.5,
                 retoken: Retokened = give_up, database: DatabaseReach | None = None,
                 bare_token_members: BareTokenMembers | None = None) -> None:
        """``database``: how this node reaches its database (None: it says nothing of it, never
        stands aside and always takes its share). Cut off from it while another member steadily
        reaches it, this node leaves the membership and hands its partitions over, and joins again
        once its database answers (``_aside_now``); while its latest probe failed it takes no
        partition (``rebalance``); its member entry tells the others whether it steadily reaches it."""
        self._js, self._topology, self.node_id = js, topology, node_id
        self._acquired, self._released, self._clock = acquired, released, clock
        self._retoken, self._database = retoken, database
        self._aside = False  # standing aside: not a member, holding nothing
        self._reaches: dict[str, bool | None] = {}  # what each member's entry says of its database
        self._splits_evenly: dict[str, bool] = {}  # whether each member's entry says it splits evenly
        self._even = True  # the split in use: even unless a member of a release before it lives
        self._deferring = False  # partitions of its share left untaken: its database does not answer
        self._bare_token_members = bare_token_members  # None: no such release to live with
        self._tick_s = tick_s if tick_s is not None else topology.lease_ttl_s / 5
        # A renewal unanswered within a tick is in doubt; renewals run concurrently, so one round
        # of 64 takes at most this long even when the bucket answers nothing.
        self._request_s = self._tick_s
        self._margin_s = safety_margin_s
        self._view = MemberView(node_id, settle_s=topology.lease_ttl_s)
        self._leases: dict[int, Lease] = {}
        self._members_kv: KeyValue | None = None
        self._leases_kv: KeyValue | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # One lock per lease key: a renewal and a release of the same lease never cross.
        self._locks: dict[int, asyncio.Lock] = {}
        self._leaving = False
        self._epoch = 0  # token_epoch of the leases bucket (start)
        self._base = 0  # added to a revision to make a token: the epoch, or 0 while bare-token nodes live
        self._epoch_for_good = bare_token_members is None
        self.rebalances = 0

    def owned(self) -> dict[int, int]:
        """{partition: fencing token} of the leases this node holds and still counts valid."""
        now = self._clock()
        return {p: lease.token for p, lease in self._leases.items() if lease.valid(now)}

    def kept(self) -> dict[int, int]:
        """{partition: fencing token} of the leases this node keeps: those it holds and those in
        doubt while the bucket is unavailable (work on them is fenced in PostgreSQL)."""
        now = self._clock()
        return {p: lease.token for p, lease in self._leases.items() if lease.kept(now)}

    def holds(self, partition: int, token: int) -> bool:
        """Whether this node may still read and commit for ``partition`` under ``token``: not while
        it stands aside. Its readers then hand no batch (nor a failed one again) to the writer,
        whose attempts against an unreachable database each held the detection lock for the
        network's timeouts (10-15 s on a path that drops packets), so the releases waiting for
        that lock trickled out: 8 of 27 partitions still held 25 s after standing aside."""
        lease = self._leases.get(partition)
        return not self._aside and lease is not None and lease.token == token and lease.valid(self._clock())

    def token_of(self, partition: int) -> int | None:
        """The fencing token of this node's lease on ``partition`` now (it changes when the lease is
        created again after an election), or None if it holds none."""
        lease = self._leases.get(partition)
        return lease.token if lease is not None else None

    @property
    def standing_aside(self) -> bool:
        """Whether this node stands aside (out of the membership, its partitions handed over)."""
        return self._aside

    def in_doubt(self) -> list[int]:
        """Partitions whose last renewal got no answer (kept while the bucket is unavailable)."""
        return sorted(p for p, lease in self._leases.items() if lease.in_doubt)

    async def start(self) -> None:
        self._members_kv = await self._js.key_value(self._topology.members_bucket)
        self._leases_kv = await self._js.key_value(self._topology.leases_bucket)
        self._epoch = token_epoch((await self._js.stream_info(f"KV_{self._topology.leases_bucket}")).created)
        self._base = self._epoch
        await self._keepalive()
        # Two loops: renewals never wait behind a slow acquisition or a reader finishing its batch
        # (not even the first round, which may start many readers).
        keepalive = asyncio.create_task(self._every(self._keepalive, from_start=True), name="ownership-keepalive")
        # A first round that fails (the leases' bucket, created a moment ago by this node, has no
        # leader yet: "no responders") is tried again a tick later, as every later round is; it
        # ended the node's start before (a full test run at load 7).
        await self._step(self.rebalance)
        self._tasks = [asyncio.create_task(self._every(self.rebalance), name="ownership-rebalance"), keepalive]

    async def stop(self) -> None:
        """Leave cleanly: leave the membership, hand every partition over, then stop renewing.

        Renewals go on while the readers finish their batches, so no lease runs out mid-handover.
        """
        self._leaving = True
        tasks: list[asyncio.Task[None] | None] = [*self._tasks] if self._tasks else [None, None]
        rebalancing, keepalive = tasks
        await cancel_and_wait([rebalancing])
        if self._members_kv is not None:
            try:
                await self._members_kv.delete(self.node_id)
            except nats.errors.Error:
                pass
        await asyncio.gather(*(self._release(p) for p in sorted(self._leases)))
        await cancel_and_wait([keepalive])
        self._tasks = []

    async def _every(self, step: Callable[[], Awaitable[None]], from_start: bool = False) -> None:
        """Run ``step`` every tick: a tick after the previous round ended, or ``from_start``, after
        it *started* (the renewals).

        Counting the tick from a renewal round's end made the rounds 2 s apart while the leases'
        bucket elected a leader (an unanswered round lasts its 1 s request timeout), and a renewal
        sent just before the election is never answered: leases were confirmed 0.3-2.6 s after the
        bucket had a leader again (bench/nats_stall.py), their readers paused meanwhile. A renewal
        round that takes longer than a tick is followed by the next at once. Rebalance rounds keep
        a tick's rest after each (one may take seconds: readers stopping, consumers checked), so
        a slow one is not followed by listing the members again at once."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._tick_s
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = loop.time() + self._tick_s
            await self._step(step)
            if not from_start:
                due = loop.time() + self._tick_s

    async def _step(self, step: Callable[[], Awaitable[None]]) -> None:
        """One round of ``step``; a failure is logged, and the next round tries again."""
        try:
            await step()
        except (nats.errors.Error, asyncio.TimeoutError) as err:
            # NATS unreachable or a bucket without a leader: the readers pause once the local
            # validity runs out (``holds``); leases in doubt are kept until the bucket answers.
            log.warning("cluster.step_failed", node=self.node_id, step=step.__name__, error=repr(err))
        except Exception:  # a loop that dies would silently stop renewing or rebalancing
            log.exception("cluster.step_failed", node=self.node_id, step=step.__name__)

    async def _keepalive(self) -> None:
        """Heartbeat the membership and renew every lease (compare-and-set on its last revision)."""
        assert self._members_kv is not None
        if not self._leaving and not await self._aside_now():
            try:
                entry = member_entry(self._database.steady() if self._database is not None else None)
                await asyncio.wait_for(self._members_kv.put(self.node_id, entry), self._request_s)
                self._view.put_answered(self._clock())
            except (nats.errors.Error, asyncio.TimeoutError) as err:  # the leases are still worth renewing
                self._view.put_failed()
                log.warning("cluster.heartbeat_failed", node=self.node_id, error=repr(err))
        # Concurrently: a bucket that answers nothing costs one request timeout, not one per lease.
        await asyncio.gather(*(self._renew_logged(p, lease) for p, lease in list(self._leases.items())))

    async def _aside_now(self) -> bool:
        """Whether this node stands aside now; entering it removes the node's member entry at once
        (the others rebalance on their next round, not a TTL later).

        It enters only for another member that reaches the database better: one whose entry says
        it steadily reaches it, or says nothing of it (a release before the field: as that release
        did, for any member). When the database is away for everyone nobody stands aside, and the
        partitions stay where they are (before, the nodes stood aside in turn and handed them to
        nodes that could not claim them either, which took and gave them back every round). A node
        alone keeps its partitions whatever its database does. Once aside it stays aside until its
        own database answers, whatever the others say meanwhile: coming back cut off would only
        move its partitions to a node that cannot claim them."""
        cut_off = self._database is not None and self._database.cut_off()
        aside = cut_off and (self._aside or self._someone_reaches_the_database())
        if aside and not self._aside:
            log.error("cluster.standing_aside", node=self.node_id, partitions=len(self._leases),
                      reason="the database has not answered: its partitions go to a detect node that reaches it")
            assert self._members_kv is not None
            try:
                await asyncio.wait_for(self._members_kv.delete(self.node_id), self._request_s)
            except (nats.errors.Error, asyncio.TimeoutError) as err:  # the entry expires after the TTL
                log.warning("cluster.leave_failed", node=self.node_id, error=repr(err))
        elif self._aside and not aside:
            log.warning("cluster.rejoining", node=self.node_id)
        self._aside = aside
        return aside

    def _someone_reaches_the_database(self) -> bool:
        """Whether another member's entry says it steadily reaches the database, or says nothing."""
        return any(self._reaches.get(member) is not False for member in self._view.members if member != self.node_id)

    async def _renew_logged(self, partition: int, lease: Lease) -> None:
        try:
            await self._renew(partition, lease)
        except (nats.errors.Error, asyncio.TimeoutError) as err:  # the others are still worth renewing
            log.warning("cluster.renew_failed", node=self.node_id, partition=partition, error=repr(err))

    async def _renew(self, partition: int, lease: Lease) -> None:
        async with self._lock(partition):
            if self._leases.get(partition) is not lease or not lease.kept(self._clock()):
                return  # released meanwhile, or already counted lost: never resurrect it
            try:
                sent = await self._renew_once(partition, lease)
            except UNAVAILABLE as err:
                if not lease.in_doubt:
                    log.warning("cluster.lease_in_doubt", node=self.node_id, partition=partition, error=repr(err))
                lease.in_doubt = True  # kept: nobody can create the key while the bucket has no quorum
                return
            if sent is None:
                lease.in_doubt = False
                return
            lease.valid_until = sent + self._topology.lease_ttl_s - self._margin_s
            if lease.in_doubt:
                log.info("cluster.lease_confirmed", node=self.node_id, partition=partition, token=lease.token)
                lease.in_doubt = False

    async def _renew_once(self, partition: int, lease: Lease) -> float | None:
        """One renewal; the time it was sent (the lease counts from there), or None if it is lost."""
        assert self._leases_kv is not None
        key, me = lease_key(partition), self.node_id.encode()
        sent = self._clock()
        try:
            lease.revision = await asyncio.wait_for(self._leases_kv.update(key, me, last=lease.revision),
                                                    self._request_s)
            return sent
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:
            entry = await asyncio.wait_for(self._leases_kv.get(key), self._request_s)
        except nats.js.errors.NotFoundError:  # expired (or deleted) on the server
            entry = None
        if entry is None and (lease.in_doubt or lease.vanished) and self._assigned(partition):
            # It expired while the bucket was electing a leader, and the partition is still ours.
            lease.vanished = True
            sent = self._clock()
            try:
                revision = await asyncio.wait_for(self._leases_kv.create(key, me), self._request_s)
            except nats.js.errors.KeyWrongLastSequenceError:  # someone else created it first
                self._lose(partition, lease)
                return None
            return sent if await self._adopt(partition, lease, revision) else None
        if entry is None or entry.value != me or (entry.revision or 0) < lease.revision:
            # Someone else wrote the key: the lease expired on the server and was taken.
            self._lose(partition, lease)
            return None
        sent = self._clock()
        if lease.vanished:
            # Our re-creation was stored although its answer was lost: adopt that revision.
            if not await self._adopt(partition, lease, entry.revision or 0):
                return None
        # Our own earlier renewal was stored but its reply was lost: no one else writes our id, so the
        # key is still ours; renew from that revision (validity counts from now).
        lease.revision = await asyncio.wait_for(self._leases_kv.update(key, me, last=entry.revision),
                                                self._request_s)
        return sent

    def _lose(self, partition: int, lease: Lease) -> None:
        log.warning("cluster.lease_lost", node=self.node_id, partition=partition)
        lease.valid_until, lease.in_doubt = 0.0, False

    async def _adopt(self, partition: int, lease: Lease, revision: int) -> bool:
        """Continue the tenure under the re-created key's ``revision`` if the fence moves to it."""
        old, new = lease.token, self._base + revision
        try:
            moved = await self._retoken(partition, old, new)
        except Exception:  # the database is down: release it (safe), the next round acquires it again
            log.exception("cluster.retoken_failed", node=self.node_id, partition=partition)
            moved = False
        lease.revision = revision  # the key is ours at this revision either way (a release deletes it)
        if not moved:
            log.warning("cluster.lease_superseded", node=self.node_id, partition=partition, token=old)
            lease.lost, lease.in_doubt = True, False
            return False
        lease.token, lease.vanished = new, False
        log.info("cluster.lease_recreated", node=self.node_id, partition=partition, token=new, previous=old)
        return True

    @property
    def members(self) -> list[str]:
        """The live detect nodes as last read (``MemberView``: steadied across a bucket outage)."""
        return self._view.members

    def share(self) -> set[int]:
        """The partitions the live member list assigns this node (what it should hold)."""
        return assignment(self.members, self._topology.partitions, even=self._even).get(self.node_id, set())

    def _choose_split(self) -> None:
        """The even split (partitions.py) once every member says it splits evenly; plain rendezvous
        while a member of a release before it lives (a rolling upgrade), since nodes computing
        different splits would each leave some partitions to the other and nobody would read them.
        Every node decides from the same entries, so they switch together, within a round of each
        other, when the last such member leaves (the moves that makes are those of a rebalance)."""
        even = all(self._splits_evenly.get(member, False) for member in self._view.members if member != self.node_id)
        if even != self._even:
            log.info("cluster.split_changed", node=self.node_id, split="even" if even else "rendezvous",
                     why=("every member splits evenly" if even
                          else "a detect node of a release before the even split is a member (rolling upgrade)"))
            self._even = even

    def _assigned(self, partition: int) -> bool:
        return partition in self.share()

    async def rebalance(self) -> None:
        """Drop leases that ran out, then move towards this node's share of the live members."""
        assert self._members_kv is not None
        now = self._clock()
        for partition in [p for p, lease in self._leases.items() if lease.lost]:
            await self._release(partition)  # re-created, but someone committed meanwhile: free our key
        for partition in [p for p, lease in self._leases.items() if not lease.kept(now)]:
            del self._leases[partition]
            self._changed("expired")
            log.warning("cluster.partition_expired", node=self.node_id, partition=partition)
            await self._released(partition)
        # No rebalance on a list that cannot be read (it raises): the view keeps the last one.
        members_kv = self._members_kv
        entries = await asyncio.wait_for(members_listed(lambda: bucket_entries(members_kv),
                                                        [m for m in self._view.members if m != self.node_id]),
                                         self._topology.lease_ttl_s / 2)
        keys = list(entries)
        # A member kept through a bucket outage (MemberView) keeps what its entry said last.
        self._reaches.update((member, reaches_database(entry)) for member, entry in entries.items())
        self._splits_evenly.update((member, splits_evenly(entry)) for member, entry in entries.items())
        before = set(self._view.members)
        after = set(self._view.read(keys, self._clock(), leaving=self._leaving or self._aside))
        if after != before:
            # Who came and who went, from this node's view: a survivor's log names the node that
            # died (its entry expired), not only the partitions it then took.
            log.info("cluster.members_changed", node=self.node_id, joined=sorted(after - before),
                     left=sorted(before - after), members=self._view.members)
        self._reaches = {member: self._reaches.get(member) for member in self._view.members}
        self._splits_evenly = {member: self._splits_evenly.get(member, False) for member in self._view.members}
        self._choose_split()
        await self._choose_tokens(keys)
        share = self.share()
        # Concurrently: a release waits for its reader's batch, an acquisition for its consumer.
        await asyncio.gather(*(self._release(p) for p in sorted(set(self._leases) - share)))
        await asyncio.gather(*(self._acquire(p) for p in self._to_take(sorted(share - set(self._leases)))))

    def _to_take(self, missing: list[int]) -> list[int]:
        """The partitions of ``missing`` to acquire now: none while this node's database does not
        answer. Acquiring one claims its fence in the database first; without it the claim fails
        and the partition is given back, to be taken and given back again every round (the churn
        of a node that takes the partitions of one standing aside, of one that died or left,
        while the database is away for it too). Left free, they are taken on the first round
        after its database answers again, or by another node if this one stands aside."""
        answers = self._database is None or self._database.answers()
        if not answers and missing and not self._deferring:
            log.warning("cluster.acquisitions_deferred", node=self.node_id, partitions=len(missing),
                        reason="the database does not answer: a partition taken now could not claim its fence")
            self._deferring = True
        elif answers and self._deferring:
            log.info("cluster.acquisitions_resumed", node=self.node_id, partitions=len(missing))
            self._deferring = False
        return missing if answers else []

    async def _choose_tokens(self, members: list[str]) -> None:
        """Bare revisions as tokens while a member of a release that uses them lives (so that it can
        still claim what this node gives up: a rolling upgrade from such a release); the epoch from
        the first round that sees none, and from then on for good (an epoch token is above every
        bare one, so switching never refuses anyone; switching back would)."""
        if self._epoch_for_good or self._bare_token_members is None:
            return
        try:
            bare = await asyncio.wait_for(self._bare_token_members([m for m in members if m != self.node_id]),
                                          self._request_s)
        except (nats.errors.Error, asyncio.TimeoutError) as err:  # keep the tokens as they are
            log.warning("cluster.token_members_unread", node=self.node_id, error=repr(err))
            return
        if bare:
            if self._base != 0:
                log.warning("cluster.bare_tokens", node=self.node_id,
                            why="a detect node of a release before 209be04 is a member (rolling upgrade)")
            self._base = 0
        else:
            if self._base != self._epoch:
                log.info("cluster.epoch_tokens", node=self.node_id)
            self._base, self._epoch_for_good = self._epoch, True

    def _changed(self, change: str) -> None:
        self.rebalances += 1
        PARTITION_CHANGES.labels(change).inc()

    def _lock(self, partition: int) -> asyncio.Lock:
        return self._locks.setdefault(partition, asyncio.Lock())

    async def _acquire(self, partition: int) -> None:
        assert self._leases_kv is not None
        async with self._lock(partition):
            sent = self._clock()
            try:
                revision = await self._leases_kv.create(lease_key(partition), self.node_id.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                return  # still held (its owner is handing it over, or its lease has not run out yet)
        token = self._base + revision
        self._leases[partition] = Lease(token=token, revision=revision,
                                        valid_until=sent + self._topology.lease_ttl_s - self._margin_s)
        self._changed("acquired")
        log.info("cluster.partition_acquired", node=self.node_id, partition=partition, token=token)
        try:
            await self._acquired(partition, token)
        except Exception:
            # Not started (NATS or the database failed): give the lease back for the next round.
            log.exception("cluster.partition_start_failed", node=self.node_id, partition=partition)
            await self._release(partition)

    async def _release(self, partition: int) -> None:
        assert self._leases_kv is not None
        lease = self._leases[partition]
        await self._released(partition)  # the reader stops and acks (renewals go on) before the key is freed
        del self._leases[partition]
        self._changed("released")
        log.info("cluster.partition_released", node=self.node_id, partition=partition)
        async with self._lock(partition):
            try:
                await self._leases_kv.delete(lease_key(partition), last=lease.revision)
            except nats.js.errors.APIError as err:
                if err.err_code != 10071:  # wrong last sequence: it expired and was taken; nothing to free
                    log.warning("cluster.release_failed", node=self.node_id, partition=partition, error=str(err))
            except (nats.errors.Error, asyncio.TimeoutError) as err:
                log.warning("cluster.release_failed", node=self.node_id, partition=partition, error=str(err))
