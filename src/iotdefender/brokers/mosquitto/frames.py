"""The report and reply batches exchanged with the plugin (layouts in defender_plugin.c).

Reports arrive as one message per pass of Mosquitto's main loop and replies leave as one message per
event-loop iteration (or, while the plugin has not taken the previous ones, per message it takes:
``REPLY_MESSAGES_IN_FLIGHT``), instead of one MQTT message each: measured on the fleet benchmark, gmqtt's
per-message work (packet parsing, acknowledgements, in-flight tracking) was the largest share of the
service's event loop. The frames are length-prefixed because CBOR payloads may hold any byte.

The reply batch also carries the service's TAKEN frame: which report and event batches it has read.
The plugin sends at most ``config.BATCHES_IN_FLIGHT`` of each kind unread ("flow" in
defender_plugin.c), so that the broker queues some hundred messages for the service's connection
whatever its pauses, and can bound what it queues for every client to Mosquitto's usual 1,000.

The reply messages also carry the service's commands to the plugin (kick, refuse, allow, certificates
denied or allowed), in COMMAND frames, in order with the replies (``ReplyBatcher.command``).

Each reply message is numbered, and kept until the plugin says it published it (the head of its
next report batch, or a P record of its events within its flush interval): what the service's
connection was sending when it broke is sent again once it is back, and the plugin skips what it
had published already (and says so again). Before, the
answers to the reports the service had read and stored when its connection broke went nowhere (an
outside-in test: 131 and 440 of 6,000 reports never answered, nothing counted).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import struct
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

import structlog
from prometheus_client import Counter

from iotdefender.brokers.mosquitto.config import MAX_PACKET_BYTES

log = structlog.get_logger("iotdefender.broker")

REPLIES_SENT_AGAIN = Counter(
    "iotdefender_broker_reply_messages_sent_again",
    "Reply messages sent again on the service's new connection to its broker: the one they were sent on "
    "broke before the plugin said it had published them (it skips those it had)")
REPLIES_NOT_SENT = Counter(
    "iotdefender_broker_replies_not_sent",
    "Replies dropped before they were sent to the broker: more than KEPT_BYTES of them waited for the plugin "
    "to take the ones before (the service's connection down, or Mosquitto stalled, for long)")

#: Plugin instance, batch number, reports it handed over before (mod 2^32), and the last reply
#: message it published: the service process's number and the message's (as a P record).
_BATCH_HEAD = struct.Struct(">IIIII")
_REPORT_HEAD = struct.Struct(">cHIQ")  # encoding, thing length, payload length, received (µs since the epoch)
_REPLY_HEAD = struct.Struct(">BHI")  # qos, topic length, payload length
_TAKEN = struct.Struct(">III")  # plugin instance, next report batch, next event batch
#: A TAKEN frame: "qos" 0xff, no topic, the three numbers (defender_plugin.c, TAKEN_FRAME).
_TAKEN_HEAD = _REPLY_HEAD.pack(0xFF, 0, _TAKEN.size)
_SEQUENCE = struct.Struct(">II")  # the service process's number, the message's
#: First in every reply message: "qos" 0xfe, no topic, the two numbers (defender_plugin.c, SEQUENCE_FRAME).
_SEQUENCE_HEAD = _REPLY_HEAD.pack(0xFE, 0, _SEQUENCE.size)
#: A command to the plugin: "qos" 0xfd, no topic, the command (defender_plugin.c, COMMAND_FRAME).
_COMMAND = 0xFD
#: Last in the message that fills the window: "qos" 0xfc, nothing else: the plugin confirms it at once
#: (defender_plugin.c, CONFIRM_FRAME) rather than with its next report batch, which a burst of
#: reports that has ended never sends (an outside-in test: answers' p99 22 -> 119 ms, the word
#: waiting for Mosquitto's idle pass).
_CONFIRM_FRAME = _REPLY_HEAD.pack(0xFC, 0, 0)
#: Replies waiting to be sent at most (bytes): at a few hundred bytes a reply, tens of thousands of
#: replies, far more than the service owes while the plugin takes its messages at any pace.
KEPT_BYTES = 64 * 1024 * 1024
_ENCODINGS = {b"j": "json", b"c": "cbor"}
#: Reply messages out before the plugin says it published them (the head of its next report batch,
#: or a P record); the replies that come meanwhile leave together in the next message. Mosquitto
#: reads one message of the service's plain socket a pass of its loop (2.0's packet__read once per
#: readiness event, unlike a TLS socket's pending bytes), and under a storm of TLS handshakes a pass
#: takes hundreds of milliseconds: a message per event-loop iteration then queued in the socket,
#: and each device's answer, and each command, waited for every message before it
#: (bench/certificates.py with revoked devices retrying every 2 s: reports' p99 12 ms -> 3.8 s, and
#: revocations took as long to cut their device off). Two: one being read while the next waits, so
#: that the word's way back is not a pause (with the CONFIRM frame, eight answered bursts of 10 to
#: 1,000 devices no faster: bench/bursts.py).
REPLY_MESSAGES_IN_FLIGHT = 2
#: The most reply frames' bytes one message carries: the service's connection is a client of the
#: broker like any other, so its packets are bound by ``MAX_PACKET_BYTES`` too (room left for the
#: MQTT header and topic). One message a loop iteration passed it under load (replies of 20
#: flooding devices, 383 KB) and the broker closed the service's connection (an outside-in test).
MAX_REPLIES_BYTES = MAX_PACKET_BYTES - 1024


class ReportBatchHead(NamedTuple):
    instance: int  # the plugin instance's number (random at its load)
    number: int  # the batch's, from 0
    before: int  # reports the instance handed over before this batch (mod 2^32)
    replies_of: int  # the service process whose reply message the plugin published last
    replies_done: int  # that message's number


def report_batch_head(batch: bytes) -> ReportBatchHead | None:
    """The batch's head, or None if there is none."""
    return ReportBatchHead(*_BATCH_HEAD.unpack_from(batch)) if len(batch) >= _BATCH_HEAD.size else None


def decode_reports(batch: bytes) -> Iterator[tuple[str, str, bytes, float]]:
    """(thing, encoding, payload, received) for each frame after the batch's head, ``received`` the
    epoch second the broker received the report at (what the throttle measures); a truncated tail
    is ignored."""
    view = memoryview(batch)
    offset, end = _BATCH_HEAD.size, len(batch)
    head = _REPORT_HEAD.size
    while offset + head <= end:
        encoding, thing_len, payload_len, micros = _REPORT_HEAD.unpack_from(batch, offset)
        start = offset + head
        offset = start + thing_len + payload_len
        if offset > end:
            return
        yield (str(view[start:start + thing_len], "utf-8"), _ENCODINGS.get(encoding, "json"),
               bytes(view[start + thing_len:offset]), micros / 1e6)


def encode_reply(topic: str, payload: bytes, qos: int) -> bytes:
    encoded = topic.encode("utf-8")
    return _REPLY_HEAD.pack(qos, len(encoded), len(payload)) + encoded + payload


def encode_command(command: bytes) -> bytes:
    """A COMMAND frame: ``command`` as on the control topic ("verb\\0targets", defender_plugin.c)."""
    return _REPLY_HEAD.pack(_COMMAND, 0, len(command)) + command


def encode_taken(instance: int, next_report_batch: int, next_event_batch: int) -> bytes:
    """The TAKEN frame: the service has read the plugin instance's report batches numbered below
    ``next_report_batch`` and its event batches below ``next_event_batch`` (modulo 2^32)."""
    return _TAKEN_HEAD + _TAKEN.pack(instance, next_report_batch % 2**32, next_event_batch % 2**32)


class ReplyBatcher:
    """Collects the replies (and commands) of an event-loop iteration and sends them as one message,
    with the latest TAKEN frame if one was given since; while ``in_flight`` messages are out that the
    plugin has not confirmed (``REPLY_MESSAGES_IN_FLIGHT``), what comes waits and leaves together, in
    one message (or as few as ``MAX_REPLIES_BYTES`` allow), once it confirms one.

    ``send`` runs on the loop; ``add`` and ``command`` may be called from any thread (off the loop it
    costs a wake-up of the loop, on it nothing but an append). Built on the loop's thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[bytes], None], taken_every: int = 8,
                 kept_bytes: int = KEPT_BYTES, in_flight: int = REPLY_MESSAGES_IN_FLIGHT) -> None:
        """``taken_every``: batches read after which a TAKEN frame goes even with no reply to carry it
        (a message more, sent even past ``in_flight``): well below what the plugin may send unread,
        so that it never waits for the word while the service reads (config.BATCHES_IN_FLIGHT), and
        so that the plugin, which confirms replies in the report batches that word lets go, is
        never kept from confirming the ones the window waits for."""
        self._loop = loop
        self._send = send
        self._taken_every = taken_every
        self._in_flight = in_flight
        # Messages sent and not yet said published (``published``), in order; on the loop's thread only.
        self.instance = secrets.randbits(32)
        self._number = 0
        self._unconfirmed: collections.deque[tuple[int, bytes]] = collections.deque()
        # Reply frames not sent yet, and their bytes; under the lock.
        self._frames: collections.deque[bytes] = collections.deque()
        self._waiting, self._waiting_max = 0, kept_bytes
        self._taken: bytes | None = None
        self._read_untold = 0  # batches read since the last TAKEN frame sent
        self._scheduled = False
        self._lock = threading.Lock()
        self._loop_thread = threading.get_ident()

    def add(self, topic: str, payload: bytes, qos: int) -> None:
        self._append(encode_reply(topic, payload, qos))

    def command(self, command: bytes) -> None:
        """A command to the plugin ("verb\\0targets"), in order with the replies: on the control topic,
        a message of its own each, the commands of a bulk revocation (a hundred a second) took
        Mosquitto's reads of the service's connection, one message a pass of its loop, from the
        replies. Never dropped for the bound on what waits (``KEPT_BYTES``): replies are."""
        self._append(encode_command(command))

    def _append(self, frame: bytes) -> None:
        with self._lock:
            self._frames.append(frame)
            self._waiting += len(frame)
            if self._waiting > self._waiting_max:
                self._drop_oldest_replies()
            schedule = self._should_schedule()
        if schedule:
            self._schedule()

    def _drop_oldest_replies(self) -> None:
        """Under the lock: the oldest reply frames go until what waits is within the bound (commands stay)."""
        kept: collections.deque[bytes] = collections.deque()
        while self._frames and self._waiting > self._waiting_max:
            frame = self._frames.popleft()
            if frame[0] == _COMMAND:
                kept.append(frame)
            else:
                self._waiting -= len(frame)
                REPLIES_NOT_SENT.inc()
        kept.extend(self._frames)
        self._frames = kept

    def taken(self, frame: bytes) -> None:
        """One more batch read, ``frame`` (``encode_taken``) telling all read so far: it goes with the
        next replies, in place of any earlier one not sent yet (it says everything that one said), or
        alone once ``taken_every`` batches were read untold."""
        with self._lock:
            self._taken = frame
            self._read_untold += 1
            schedule = self._read_untold >= self._taken_every and self._should_schedule()
        if schedule:
            self._schedule()

    def _should_schedule(self) -> bool:
        """Under the lock: whether a flush is to be scheduled now (none is, and it is claimed)."""
        if self._scheduled:
            return False
        self._scheduled = True
        return True

    def _schedule(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._flush)
        else:
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            self._scheduled = False
            room = self._in_flight - len(self._unconfirmed)
            taken_due = self._taken is not None and self._read_untold >= self._taken_every
            messages: list[bytes] = []
            if room > 0 and self._frames:
                frames = [self._taken] if self._taken is not None else []
                frames.extend(self._frames)
                messages = list(itertools.islice(_messages(frames), room))
                sent = sum(map(len, messages)) - (len(self._taken) if self._taken is not None else 0)
                while sent > 0:  # the frames now in ``messages`` (whole: a frame is never cut)
                    frame = self._frames.popleft()
                    sent -= len(frame)
                    self._waiting -= len(frame)
            elif taken_due:  # alone, even past the window (see __init__)
                messages = [self._taken]  # type: ignore[list-item]
            if messages and self._taken is not None:
                self._taken, self._read_untold = None, 0
        for message in messages:
            self._send(self._numbered(message))

    def _numbered(self, message: bytes) -> bytes:
        """``message`` after its SEQUENCE frame (and before a CONFIRM frame if it fills the window),
        kept until the plugin says it published it."""
        self._number = (self._number + 1) % 2**32
        numbered = _SEQUENCE_HEAD + _SEQUENCE.pack(self.instance, self._number) + message
        if len(self._unconfirmed) + 1 >= self._in_flight:
            numbered += _CONFIRM_FRAME
        self._unconfirmed.append((self._number, numbered))
        return numbered

    @property
    def unconfirmed(self) -> int:
        """Messages out that the plugin has not said it published."""
        return len(self._unconfirmed)

    def published(self, of: int, number: int) -> None:
        """The plugin published the messages numbered up to ``number`` of the process ``of`` (a
        report batch's head, or a P record): they need not be sent again, and as many more may go."""
        if of != self.instance:
            return  # a process of the service before this one
        confirmed = False
        while self._unconfirmed and (number - self._unconfirmed[0][0]) % 2**32 < 2**31:
            self._unconfirmed.popleft()
            confirmed = True
        if confirmed:
            with self._lock:
                schedule = bool(self._frames) and self._should_schedule()
            if schedule:
                self._schedule()

    def send_again(self) -> int:
        """On a new connection: every message the plugin did not say it published, in order (it
        skips those it had). Returns how many."""
        for _, numbered in self._unconfirmed:
            self._send(numbered)
        if self._unconfirmed:
            REPLIES_SENT_AGAIN.inc(len(self._unconfirmed))
            log.info("reply_messages_sent_again", messages=len(self._unconfirmed),
                     bytes=sum(len(numbered) for _, numbered in self._unconfirmed))
        return len(self._unconfirmed)


def _messages(frames: list[bytes]) -> Iterator[bytes]:
    """The frames in order, as few messages as hold at most ``MAX_REPLIES_BYTES`` each (a frame
    is never cut: one reply is far smaller, its error message bounded by ``replies.py``)."""
    chunk: list[bytes] = []
    size = 0
    for frame in frames:
        if chunk and size + len(frame) > MAX_REPLIES_BYTES:
            yield b"".join(chunk)
            chunk, size = [], 0
        chunk.append(frame)
        size += len(frame)
    if chunk:
        yield b"".join(chunk)
