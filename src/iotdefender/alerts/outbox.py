"""Alert delivery out of the durable outbox (routing into it: alerts/routes.py).

Delivery runs in its own task and never blocks evaluation: due rows are sent, failures retried
with exponential backoff, and a row that exhausts its attempts is kept as a dead letter (listed by
``GET /_iotdefender/alerts/dead``).
A burst is rate-limited per destination (token bucket), never dropped: what waits stays pending.
Each destination's rows are sent by a lane of its own, in order, beside the other destinations':
one that is slow or hangs until the send timeout delays only its own alerts.
A row for a topic without a destination (``routes.NO_DESTINATION``) is dead on arrival: marked with
the reason, counted as ``no_destination``, its topic logged once. A row whose kind of destination
this release does not know (``routes.KINDS``: a newer release wrote it into the shared outbox during
a rolling upgrade) is never claimed here (``alert_outbox.claim``), so a node that knows the kind
sends it without waiting for this node; nothing is lost or dead-lettered for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import structlog
from prometheus_client import Counter
from sqlalchemy.engine import Engine

from iotdefender.alerts.metrics_export import MQTT_PREFIX, merged
from iotdefender.alerts.routes import KINDS, NO_DESTINATION, SNS_PREFIX, AlertRoutes, kind_of
from iotdefender.alerts.subscriptions import Webhook
from iotdefender.cancellation import wait_event
from iotdefender.store import alert_outbox
from iotdefender.store.availability import log_unless_outage
from iotdefender.store.database import writing

if TYPE_CHECKING:
    import httpx

log = structlog.get_logger("iotdefender.alerts")

DELIVERIES = Counter("iotdefender_alert_deliveries", "Alert delivery attempts by outcome", ["kind", "outcome"])
MAX_ATTEMPTS = 8
SEND_TIMEOUT_S = 10.0  # a webhook's HTTP timeout
# How long a claimed row is this node's to send (alert_outbox.claim). A round stops starting sends
# once less than 1.5 send timeouts are left of its hold, and gives the rest back, so no row is
# still being sent here when another node may claim it.
CLAIM_HOLD_S = 120.0
# Rows claimed at once: a node killed while it holds them leaves them to the others only after
# CLAIM_HOLD_S, so a claim takes about what a destination can send (its burst at the default
# rate), never rows of a destination whose bucket is empty or whose lane is still sending
# (alert_outbox.claim's ``skip``): at most one batch a destination is held. A lane that finishes
# wakes the next claim at once, so the batch bounds the delay a kill causes, not the throughput
# (each send is its own round trip and its own mark anyway).
CLAIM_BATCH = 20
# A metrics export topic's rows (``mqtt:`` destinations, one per detection transaction and topic)
# are published at most once an interval, those written meanwhile merged into as few messages as
# 128 KB allows (AWS "batches metric values … and publishes them … at regular intervals"), and
# deleted in one write. Published and deleted one by one, each a claim and a delete of the single
# writer, exporting every behavior of 3 profiles cost 1.75x the CPU of a report and took p99
# publish -> accepted from 30 to 269 ms (an outside-in run: 2,000 devices, ~140 reports/s, SQLite).
EXPORT_INTERVAL_S = 1.0
EXPORT_CLAIM = 200  # rows of export topics claimed at once (up to 25 MB; the alerts' claim stays CLAIM_BATCH)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float = 0.0
    updated: float = field(default_factory=lambda: time.monotonic())

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def empty(self) -> bool:
        """Whether a send now would be refused (the tokens refilled up to now first)."""
        self._refill()
        return self.tokens < 1

    def take(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now


class AlertDelivery:
    """Runs the delivery loop over the outbox; ``routes`` gives the webhooks' secrets."""

    def __init__(self, engine: Engine, routes: AlertRoutes, region: str, rate_per_destination: float = 20.0,
                 retry_base_s: float = 1.0, claim_hold_s: float = CLAIM_HOLD_S,
                 send_timeout_s: float = SEND_TIMEOUT_S, sole_deliverer: bool = False,
                 kinds: frozenset[str] = KINDS) -> None:
        self._engine = engine
        self._kinds = kinds  # the kinds of destination it sends (a broker node of a cluster: ``mqtt`` alone)
        self._routes = routes
        self._region = region
        self._rate = rate_per_destination
        self._retry_base = retry_base_s
        self._hold_s, self._send_timeout_s = claim_hold_s, send_timeout_s
        # One box: this process is the outbox's only deliverer, so a claim found at start is its
        # previous life's (killed mid-send) and is taken back at once rather than after the hold.
        self._reclaim_pending = sole_deliverer
        self._buckets: dict[str, TokenBucket] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._sns: Any = None
        self._unreached_logged: set[str] = set()  # topics without a destination, logged once each
        self._lanes: dict[str, asyncio.Task[None]] = {}  # destination -> its lane sending its claimed rows
        # Publishes a metrics export's message on the broker (``publish_mqtt_with``): until it is
        # given, and on a node without the broker role, ``mqtt:`` rows are left to another deliverer.
        self._publish_mqtt: Callable[[str, bytes], None] | None = None
        self._broker_up: Callable[[], bool] = lambda: False

    def publish_mqtt_with(self, publish: Callable[[str, bytes], None], up: Callable[[], bool] = lambda: True) -> None:
        """Send the ``mqtt:`` rows (metrics export) with ``publish(topic, payload)`` from now on,
        while ``up()`` (a cluster's external broker is read by one node at a time)."""
        self._publish_mqtt, self._broker_up = publish, up

    # -- delivery ---------------------------------------------------------------------------------
    def wake(self) -> None:
        """Thread-safe nudge: new rows are waiting."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        # An event of this loop: one an earlier run() waited on is bound to that run's loop
        # (asyncio.Event, Python 3.10+), and waiting on it here raised, ending this run with its
        # lanes cancelled mid-send.
        self._wake = asyncio.Event()
        try:
            while True:
                try:
                    if self._reclaim_pending:
                        await anyio.to_thread.run_sync(self._reclaim)
                    delivered = await self._deliver_due()
                except Exception as error:  # the outbox is durable: delivery resumes when the database is back
                    log_unless_outage(log, "alert_delivery_failed", error)
                    delivered = 0
                if not delivered:
                    await wait_event(self._wake, 0.5)
                    self._wake.clear()
        finally:
            lanes = list(self._lanes.values())
            for lane in lanes:  # their unsent rows are due again after the hold (one box: at the next start)
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
            # A lane cancelled before its first step never ran its ``finally``: without this its
            # destination would stay busy, never claimed again by a later run() of this deliverer.
            self._lanes.clear()
            if self._http is not None:
                await self._http.aclose()
                self._http = None  # a later run() makes a new one

    def _busy(self) -> set[str]:
        """The destinations not to claim for now: a lane at work, or an empty bucket. Read on the
        event loop, which alone changes the lanes and the buckets (a worker thread iterating them
        could meet a lane ending: "dictionary changed size during iteration")."""
        return {destination for destination, lane in self._lanes.items() if not lane.done()} | \
            {destination for destination, bucket in self._buckets.items() if bucket.empty()}

    def _due(self, skipped: set[str], limit: int = CLAIM_BATCH) -> Sequence[Any]:
        """Claimed due rows, but none of the ``skipped`` destinations."""
        mqtt = kind_of(MQTT_PREFIX)
        alert_kinds = self._kinds - {mqtt}
        with writing(self._engine) as conn:
            now = time.time()
            rows = list(alert_outbox.claim(conn, now, limit, self._hold_s, alert_kinds, skip=skipped)
                        if alert_kinds else [])
            if mqtt in self._kinds and self._broker_up():
                rows += alert_outbox.claim(conn, now, EXPORT_CLAIM, self._hold_s, {mqtt}, skip=skipped)
            return rows

    def _reclaim(self) -> None:
        with writing(self._engine) as conn:
            taken = alert_outbox.reclaim(conn, time.time())
        self._reclaim_pending = False  # once, and only once it committed (an outage retries it)
        if taken:
            log.warning("alerts_reclaimed", rows=taken,
                        reason="claimed by this service before it stopped without sending them; sent again")

    def _release(self, row_ids: list[int]) -> None:
        with writing(self._engine) as conn:
            alert_outbox.release(conn, row_ids, time.time())

    def _mark(self, row_id: int, **values: Any) -> None:
        with writing(self._engine) as conn:
            alert_outbox.mark(conn, row_id, **values)

    def _forget(self, row_ids: list[int]) -> None:
        with writing(self._engine) as conn:
            alert_outbox.delete(conn, row_ids)

    def _bury(self, rows: Sequence[Any]) -> None:
        """Rows whose topic has no destination: dead at once, with why and how to fix it."""
        with writing(self._engine) as conn:
            for row in rows:
                alert_outbox.mark(conn, row.id, status="dead",
                                  last_error=self._routes.undeliverable(row.target_arn) or f"SNS topic {row.target_arn} had no destination when the alert was raised")

    async def _undeliverable(self, rows: Sequence[Any]) -> None:
        await anyio.to_thread.run_sync(self._bury, rows)
        DELIVERIES.labels("sns", "no_destination").inc(len(rows))
        for topic in sorted({row.target_arn for row in rows} - self._unreached_logged):
            self._unreached_logged.add(topic)
            log.warning("alert_undeliverable", topic=topic, reason=self._routes.undeliverable(topic),
                        note="logged once per topic; counted by iotdefender_alert_deliveries_total"
                             '{outcome="no_destination"}')

    async def _deliver_due(self) -> int:
        """Claim the due rows of the destinations without a lane at work and hand each
        destination's rows to a lane of its own; how many rows were claimed (0: the loop rests)."""
        claimed = time.monotonic()
        rows = await anyio.to_thread.run_sync(self._due, self._busy())
        unreached = [row for row in rows if row.destination == NO_DESTINATION]
        if unreached:
            await self._undeliverable(unreached)
        by_destination: dict[str, list[Any]] = {}
        for row in rows:
            if row.destination != NO_DESTINATION:
                by_destination.setdefault(row.destination, []).append(row)
        for destination, its_rows in by_destination.items():
            self._lanes[destination] = asyncio.create_task(self._lane(destination, its_rows, claimed),
                                                           name=f"alert-lane {kind_of(destination)}")
        return len(rows)

    async def _lane(self, destination: str, rows: Sequence[Any], claimed: float) -> None:
        """One destination's claimed rows, sent one after the other (in order), beside the other
        destinations' lanes: sends were one at a time over every destination, so one that hung
        until the send timeout held every other's alerts to one per timeout. The claim skips a
        destination while its lane works (``_due``), so a destination has one lane at a time here."""
        limited: list[int] = []  # claimed and not attempted: released for a later claim
        try:
            if destination.startswith(MQTT_PREFIX):
                await self._export(destination[len(MQTT_PREFIX):], rows)
                return
            bucket = self._buckets.setdefault(destination, TokenBucket(self._rate, self._rate))
            for index, row in enumerate(rows):
                if time.monotonic() - claimed > self._hold_s - 1.5 * self._send_timeout_s:
                    # The hold is running out: give the rest back rather than send what another node may take.
                    limited += [r.id for r in rows[index:]]
                    break
                if not bucket.take():
                    limited.append(row.id)  # rate-limited: stays pending, goes in a later claim
                    continue
                await self._attempt(row)
            if limited:
                await anyio.to_thread.run_sync(self._release, limited)
        except Exception as error:  # the outbox is durable: unmarked rows are due again after the hold
            log_unless_outage(log, "alert_delivery_failed", error)
        finally:
            self._lanes.pop(destination, None)
            self._wake.set()  # its next rows may be due: claim them now, not at the next rest's end

    async def _attempt(self, row: Any) -> None:
        """Send one row and mark the outcome: delivered, or pending again after its backoff (dead
        once it exhausted its attempts)."""
        try:
            await self._send(row)
        except Exception as error:  # any failure of the destination: retry later
            await self._failed(row, error)
            return
        await anyio.to_thread.run_sync(lambda: self._mark(row.id, attempts=row.attempts + 1, status="delivered"))
        DELIVERIES.labels(kind_of(row.destination), "delivered").inc()

    async def _failed(self, row: Any, error: Exception) -> None:
        """A send of ``row`` failed: pending again after its backoff, dead once it exhausted its attempts."""
        # Some errors say nothing of themselves (str() of httpx's ReadTimeout is ""): their name then.
        attempts, reason = row.attempts + 1, (str(error) or type(error).__name__)[:2000]
        dead = attempts >= MAX_ATTEMPTS
        await anyio.to_thread.run_sync(lambda: self._mark(
            row.id, attempts=attempts, status="dead" if dead else "pending", last_error=reason,
            next_attempt_at=time.time() + self._retry_base * 2 ** (attempts - 1)))
        DELIVERIES.labels(kind_of(row.destination), "dead" if dead else "retry").inc()
        log.warning("alert_delivery_failed", destination=row.destination, attempts=attempts, dead=dead,
                    error=reason[:300])

    async def _export(self, topic: str, rows: Sequence[Any]) -> None:
        """A metrics export topic's claimed rows: merged into messages of at most 128 KB,
        published, deleted in one write (an export's message is kept for nobody once sent); then
        the topic rests ``EXPORT_INTERVAL_S`` (its lane still at work, so not claimed), and what is
        written meanwhile goes in the next batch. A broker that refuses them: each row fails as a
        send does."""
        try:
            if self._publish_mqtt is None:  # claimed before this deliverer lost its broker: retried
                raise RuntimeError("no MQTT broker to publish the metrics export on")
            for message in merged(row.message for row in rows):
                self._publish_mqtt(topic, message.encode())
        except Exception as error:
            for row in rows:
                await self._failed(row, error)
            return
        await anyio.to_thread.run_sync(self._forget, [row.id for row in rows])
        DELIVERIES.labels(kind_of(MQTT_PREFIX), "delivered").inc(len(rows))
        await asyncio.sleep(EXPORT_INTERVAL_S)

    async def _send(self, row: Any) -> None:
        body = row.message.encode()
        if row.destination.startswith(SNS_PREFIX):
            await anyio.to_thread.run_sync(self._publish_sns, row.destination[len(SNS_PREFIX):], row.message)
            return
        if row.destination.startswith("apprise:"):
            await anyio.to_thread.run_sync(self._notify_apprise, row.destination[len("apprise:"):], row.message)
            return
        url = row.destination[len("webhook:"):]
        hook = next((h for h in self._routes.subscriptions.get(row.target_arn, [])
                     if isinstance(h, Webhook) and h.url == url), None)
        if hook is None:  # the subscriptions changed since the alert was routed (a restart, another node's file)
            raise LookupError(f"webhook {url} is not in this node's --alert-subscriptions for topic "
                              f"{row.target_arn} any more, so its signing secret is unknown here; retried like any failed "
                              "send, so a node whose file has it may send it")
        timestamp = str(int(time.time()))
        if self._http is None:  # made at the first webhook: httpx (~0.06 s to import) and its TLS context
            import httpx          # (the CA bundle, ~0.05 s) are paid by services that send webhooks only

            self._http = httpx.AsyncClient(timeout=self._send_timeout_s)
        response = await self._http.post(url, content=body, headers={
            "Content-Type": "application/json", "X-Iotdefender-Timestamp": timestamp,
            "X-Iotdefender-Signature": sign(hook.secret, timestamp, body)})
        response.raise_for_status()

    @staticmethod
    def _notify_apprise(url: str, message: str) -> None:
        import apprise

        event = json.loads(message)
        notifier = apprise.Apprise()
        if not notifier.add(url):
            raise ValueError(f"Apprise cannot use this URL: {url}")
        title = (f"Device Defender {event['violationEventType']}: {event['thingName']} / "
                 f"{event['securityProfileName']} / {event['behavior'].get('name')}")
        if not notifier.notify(title=title, body=message):
            raise RuntimeError("Apprise could not deliver the notification")

    def _publish_sns(self, topic_arn: str, message: str) -> None:
        if self._sns is None:
            import botocore.session

            self._sns = botocore.session.get_session().create_client(
                "sns", region_name=self._region, endpoint_url=self._routes.sns_endpoint_url)
        self._sns.publish(TopicArn=topic_arn, Message=message)

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            return alert_outbox.dead_letters(conn, limit)
