"""A partition consumer's deliveries through one open pull request at a time.

nats-py's ``PullSubscription.fetch`` sends a ``no_wait`` pull request first and, when it finds
nothing, a second, lingering one; it returns after the first report, leaving that request open on
the server. With 64 partitions each fetching after every batch, that was about 1.7 pull requests
(plus their ``404``/``408`` status replies) per report at 500 reports/s, measured with nats-server's
``/varz``: more messages than the report's own publish and ack. Here one request ``{batch,
expires}`` stays open until it delivered ``batch`` reports or expired, and every ``fetch`` takes
what it delivered meanwhile: a partition that gets reports steadily costs one request per
``expires_s`` (or per ``batch`` reports), an idle one one request and its ``408`` per ``expires_s``.

Reports still arrive in stream order (one consumer, one inbox, one request open, delivered in
order) and are acked by the reader after its batch committed, exactly as before. A request lives
at most until the deadline of the fetch that sent it (``expires_s`` at most), as nats-py's did, so
a reader that stopped, or whose lease is in doubt, leaves no request able to take reports for
longer than that (report_stream.PartitionReader.start relies on it).
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from iotdefender.cancellation import wait_event

STATUS = "Status"
DESCRIPTION = "Description"
NO_MESSAGES, REQUEST_TIMEOUT, CONFLICT, HEARTBEAT = "404", "408", "409", "100"


class PullStream:
    """Reads one durable pull consumer through a subscription of its own (``start`` first)."""

    def __init__(self, nc: Client, api_prefix: str, stream: str, consumer: str, batch: int,
                 expires_s: float) -> None:
        self._nc, self._batch, self._expires_s = nc, batch, expires_s
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._queue: collections.deque[Msg] = collections.deque()
        self._arrived = asyncio.Event()
        self._sub: Subscription | None = None
        self._left = 0  # reports the open request may still deliver
        self._requested_at = self._expires_at = 0.0

    async def start(self) -> None:
        async def received(msg: Msg) -> None:
            self._queue.append(msg)
            self._arrived.set()

        self._sub = await self._nc.subscribe(self._inbox, cb=received)

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """The reports delivered so far (at most ``batch``), else the first within ``timeout``.

        Raises ``asyncio.TimeoutError`` when none came, ``nats.errors.Error`` when the server
        answered the request with an error (the reader checks its consumer then)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        msgs: list[Msg] = []
        while True:
            self._take(msgs, batch, loop.time())
            if msgs:
                return msgs
            now = loop.time()
            if now >= deadline:
                raise asyncio.TimeoutError
            if (self._left <= 0 or now >= self._expires_at) and not await self._request(now, deadline):
                raise asyncio.TimeoutError
            self._arrived.clear()
            if self._queue:
                continue
            await wait_event(self._arrived, max(0.0, min(deadline, self._expires_at) - now))

    async def keep_open(self, timeout: float) -> None:
        """A request open for up to ``timeout`` (sent unless one is): a reader calls it as it hands
        a batch over, so what arrives while that batch waits for the writer is delivered and can
        join it (``take_delivered``) rather than wait for the reader's next ``fetch``."""
        now = asyncio.get_running_loop().time()
        if self._left <= 0 or now >= self._expires_at:
            await self._request(now, now + timeout)

    async def _request(self, now: float, deadline: float) -> bool:
        """Send a request that ends by ``deadline`` (False if too little time is left), so none
        outlives the ownership check the reader made before calling by more than its timeout (as
        nats-py's did)."""
        expires = min(self._expires_s, deadline - now)
        if expires < 0.01:
            return False
        self._left, self._requested_at, self._expires_at = self._batch, now, now + expires
        request = json.dumps({"batch": self._batch, "expires": int(expires * 1e9)}).encode()
        await self._nc.publish(self._next_subject, request, reply=self._inbox)
        return True

    def take_delivered(self, limit: int, accept: Callable[[Msg], bool]) -> list[Msg]:
        """The reports delivered so far (at most ``limit``), without waiting or asking for more,
        up to the first that ``accept`` refuses or a status that is an error: both are left for
        the next ``fetch``. For a reader adding to a batch that has not been taken yet."""
        msgs: list[Msg] = []
        self._take(msgs, limit, asyncio.get_running_loop().time(), accept)
        return msgs

    def _take(self, msgs: list[Msg], batch: int, now: float, accept: Callable[[Msg], bool] | None = None) -> None:
        while self._queue and len(msgs) < batch:
            msg = self._queue[0]
            status = msg.headers.get(STATUS) if msg.headers else None
            if not status:
                if accept is not None and not accept(msg):
                    return
                msgs.append(self._queue.popleft())
                self._left -= 1
                continue
            if status == HEARTBEAT:
                self._queue.popleft()
                continue
            if status in (NO_MESSAGES, REQUEST_TIMEOUT, CONFLICT):
                self._queue.popleft()
                # A 408 well before the open request's end is the previous request's (clocks
                # differ by a little): the open one is still delivering.
                if status != REQUEST_TIMEOUT or now >= self._requested_at + 0.8 * (self._expires_at - self._requested_at):
                    self._left = 0
                continue
            if msgs or accept is not None:  # hand over what came before it first; raise on the next fetch
                return
            self._queue.popleft()
            self._left = 0
            raise nats.errors.Error(f"pull request answered {status} {(msg.headers or {}).get(DESCRIPTION, '')}".strip())
