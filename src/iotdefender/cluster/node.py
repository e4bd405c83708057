"""A detect node's consuming side: ownership decides the partitions, one reader runs per partition.

On acquiring a partition the node first calls ``on_acquired`` (the pipeline's
``PartitionBatchStore`` claims the fence in PostgreSQL and loads the partition's alarm states), then
starts a reader that resets the consumer if the previous owner left reports unacked (they come
first). On losing one it stops the reader (the batch in hand finishes and is acked), then calls
``on_released`` (the pipeline forgets the partition's states), before the lease is freed for the
next owner. When the lease had to be created again after a NATS election (ownership.py), the
node moves the fence to the new token (``on_retoken``) and the reader goes on under it: nothing is
stopped or reloaded. Cut off from its database while another member reaches it
(database_reach.py) the node hands every partition over and takes its share again afterwards.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from iotdefender.cluster.database_reach import DatabaseReach
from iotdefender.cluster.ownership import BareTokenMembers, Ownership, give_up
from iotdefender.cluster.report_stream import Aside, BatchHandler, PartitionReader
from iotdefender.cluster.topology import Topology


async def _nothing(partition: int, token: int) -> None:
    return None


async def _forget_nothing(partition: int) -> None:
    return None


class DetectConsumer:
    """Runs a ``PartitionReader`` for every partition this node owns (``aside``: what its readers
    settle beside their batches, report_stream.Aside)."""

    def __init__(self, js: JetStreamContext, topology: Topology, node_id: str, handler: BatchHandler,
                 on_acquired: Callable[[int, int], Awaitable[None]] = _nothing,
                 on_released: Callable[[int], Awaitable[None]] = _forget_nothing, batch: int = 256,
                 on_retoken: Callable[[int, int, int], Awaitable[bool]] = give_up,
                 database: DatabaseReach | None = None,
                 bare_token_members: BareTokenMembers | None = None, aside: Aside | None = None) -> None:
        self._js, self._topology, self._handler, self._aside = js, topology, handler, aside
        self._on_acquired, self._on_released, self._batch = on_acquired, on_released, batch
        self._on_retoken = on_retoken
        self.readers: dict[int, PartitionReader] = {}
        self.ownership = Ownership(js, topology, node_id, self._acquired, self._released, retoken=self._retoken,
                                   database=database, bare_token_members=bare_token_members)

    async def start(self) -> None:
        await self.ownership.start()

    def read_through(self, partition: int) -> float:
        """When the partition's reader last had everything stored before handled (``-inf``: never,
        or not this node's)."""
        reader = self.readers.get(partition)
        return reader.read_through if reader is not None else float("-inf")

    async def stop(self) -> None:
        await self.ownership.stop()

    async def _acquired(self, partition: int, token: int) -> None:
        await self._on_acquired(partition, token)
        # The lease may have been created again (a new token, the fence moved) while the claim ran.
        current = self.ownership.token_of(partition) or token
        reader = PartitionReader(self._js, self._topology, partition, self._handler, current,
                                 lambda: self.ownership.holds(partition, reader.token), batch=self._batch,
                                 aside=self._aside)
        self.readers[partition] = reader
        await reader.start()

    async def _retoken(self, partition: int, old: int, new: int) -> bool:
        if not await self._on_retoken(partition, old, new):
            return False
        reader = self.readers.get(partition)
        if reader is not None:
            reader.token = new  # its next batch is checked against the moved fence
        return True

    async def _released(self, partition: int) -> None:
        reader = self.readers.pop(partition, None)
        try:
            if reader is not None:
                await reader.stop()  # re-raises what ended a reader (a connection that closed under it)
        finally:
            await self._on_released(partition)  # the partition is not this node's either way
