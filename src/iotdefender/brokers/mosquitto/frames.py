"""The report and reply batches exchanged with the plugin (layouts in defender_plugin.c).

Reports arrive as one message per pass of Mosquitto's main loop and replies leave as one message per
event-loop iteration, instead of one MQTT message each: measured on the fleet benchmark, gmqtt's
per-message work (packet parsing, acknowledgements, in-flight tracking) was the largest share of the
service's event loop. The frames are length-prefixed because CBOR payloads may hold any byte.

The reply batch also carries the service's TAKEN frame: which report and event batches it has read.
The plugin sends at most ``config.BATCHES_IN_FLIGHT`` of each kind unread ("flow" in
defender_plugin.c), so that the broker queues some hundred messages for the service's connection
whatever its pauses, and can bound what it queues for every client to Mosquitto's usual 1,000.

Each reply message is numbered, and kept until the plugin says it published it (a P record of its
events, within its flush interval): what the service's connection was sending when it broke is
sent again once it is back, and the plugin skips what it had published already. Before, the
answers to the reports the service had read and stored when its connection broke went nowhere (an
outside-in test: 131 and 440 of 6,000 reports never answered, nothing counted).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import struct
import threading
from collections.abc import Callable, Iterator

import structlog
from prometheus_client import Counter

from iotdefender.brokers.mosquitto.config import MAX_PACKET_BYTES

log = structlog.get_logger("iotdefender.broker")

REPLIES_SENT_AGAIN = Counter(
    "iotdefender_broker_reply_messages_sent_again",
    "Reply messages sent again on the service's new connection to its broker: the one they were sent on "
    "broke before the plugin said it had published them (it skips those it had)")
REPLIES_NOT_KEPT = Counter(
    "iotdefender_broker_reply_messages_not_kept",
    "Reply messages forgotten before the plugin said it had published them (more than KEPT_BYTES waited "
    "for its word): not sent again if the connection breaks")

_BATCH_HEAD = struct.Struct(">III")  # plugin instance, batch number, reports it handed over before (mod 2^32)
_REPORT_HEAD = struct.Struct(">cHIQ")  # encoding, thing length, payload length, received (µs since the epoch)
_REPLY_HEAD = struct.Struct(">BHI")  # qos, topic length, payload length
_TAKEN = struct.Struct(">III")  # plugin instance, next report batch, next event batch
#: A TAKEN frame: "qos" 0xff, no topic, the three numbers (defender_plugin.c, TAKEN_FRAME).
_TAKEN_HEAD = _REPLY_HEAD.pack(0xFF, 0, _TAKEN.size)
_SEQUENCE = struct.Struct(">II")  # the service process's number, the message's
#: First in every reply message: "qos" 0xfe, no topic, the two numbers (defender_plugin.c, SEQUENCE_FRAME).
_SEQUENCE_HEAD = _REPLY_HEAD.pack(0xFE, 0, _SEQUENCE.size)
#: Reply messages kept for the plugin's word at most (bytes): at a few hundred bytes a reply, tens of
#: thousands of replies, far more than the plugin's flush interval holds at any rate the service takes.
KEPT_BYTES = 64 * 1024 * 1024
_ENCODINGS = {b"j": "json", b"c": "cbor"}
#: The most reply frames' bytes one message carries: the service's connection is a client of the
#: broker like any other, so its packets are bound by ``MAX_PACKET_BYTES`` too (room left for the
#: MQTT header and topic). One message a loop iteration passed it under load (replies of 20
#: flooding devices, 383 KB) and the broker closed the service's connection (an outside-in test).
MAX_REPLIES_BYTES = MAX_PACKET_BYTES - 1024


def report_batch_head(batch: bytes) -> tuple[int, int, int] | None:
    """(plugin instance, batch number, reports it handed over before this batch), or None if there is
    no head."""
    return _BATCH_HEAD.unpack_from(batch) if len(batch) >= _BATCH_HEAD.size else None


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


def encode_taken(instance: int, next_report_batch: int, next_event_batch: int) -> bytes:
    """The TAKEN frame: the service has read the plugin instance's report batches numbered below
    ``next_report_batch`` and its event batches below ``next_event_batch`` (modulo 2^32)."""
    return _TAKEN_HEAD + _TAKEN.pack(instance, next_report_batch % 2**32, next_event_batch % 2**32)


class ReplyBatcher:
    """Collects the replies published during one event-loop iteration and sends them as one message,
    with the latest TAKEN frame if one was given since.

    ``send`` runs on the loop once per iteration that published anything; ``add`` may be called from
    any thread (off the loop it costs a wake-up of the loop, on it nothing but an append). Built on
    the loop's thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Callable[[bytes], None], taken_every: int = 8,
                 kept_bytes: int = KEPT_BYTES) -> None:
        """``taken_every``: batches read after which a TAKEN frame goes even with no reply to carry it
        (a message more): well below what the plugin may send unread, so that it never waits for
        the word while the service reads (config.BATCHES_IN_FLIGHT)."""
        self._loop = loop
        self._send = send
        self._taken_every = taken_every
        # Messages sent and not yet said published (``published``), in order; on the loop's thread only.
        self.instance = secrets.randbits(32)
        self._number = 0
        self._unconfirmed: collections.deque[tuple[int, bytes]] = collections.deque()
        self._kept, self._kept_max = 0, kept_bytes
        self._frames: list[bytes] = []
        self._taken: bytes | None = None
        self._read_untold = 0  # batches read since the last TAKEN frame sent
        self._lock = threading.Lock()
        self._loop_thread = threading.get_ident()

    def add(self, topic: str, payload: bytes, qos: int) -> None:
        frame = encode_reply(topic, payload, qos)
        with self._lock:
            first = not self._frames
            self._frames.append(frame)
        if first:
            self._schedule()

    def taken(self, frame: bytes) -> None:
        """One more batch read, ``frame`` (``encode_taken``) telling all read so far: it goes with the
        next replies, in place of any earlier one not sent yet (it says everything that one said), or
        alone at the end of this iteration once ``taken_every`` batches were read untold."""
        with self._lock:
            self._taken = frame
            self._read_untold += 1
            alone = self._read_untold == self._taken_every and not self._frames
        if alone:
            self._schedule()

    def _schedule(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._loop.call_soon(self._flush)
        else:
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            frames, self._frames = self._frames, []
            if self._taken is not None and (frames or self._read_untold >= self._taken_every):
                frames.insert(0, self._taken)
                self._taken, self._read_untold = None, 0
        for message in _messages(frames):
            self._send(self._numbered(message))

    def _numbered(self, message: bytes) -> bytes:
        """``message`` after its SEQUENCE frame, kept until the plugin says it published it."""
        self._number = (self._number + 1) % 2**32
        numbered = _SEQUENCE_HEAD + _SEQUENCE.pack(self.instance, self._number) + message
        self._unconfirmed.append((self._number, numbered))
        self._kept += len(numbered)
        while self._kept > self._kept_max:
            self._kept -= len(self._unconfirmed.popleft()[1])
            REPLIES_NOT_KEPT.inc()
        return numbered

    def published(self, of: int, number: int) -> None:
        """The plugin published the messages numbered up to ``number`` of the process ``of`` (a P
        record): they need not be sent again."""
        if of != self.instance:
            return  # a process of the service before this one
        while self._unconfirmed and (number - self._unconfirmed[0][0]) % 2**32 < 2**31:
            self._kept -= len(self._unconfirmed.popleft()[1])

    def send_again(self) -> int:
        """On a new connection: every message the plugin did not say it published, in order (it
        skips those it had). Returns how many."""
        for _, numbered in self._unconfirmed:
            self._send(numbered)
        if self._unconfirmed:
            REPLIES_SENT_AGAIN.inc(len(self._unconfirmed))
            log.info("reply_messages_sent_again", messages=len(self._unconfirmed), bytes=self._kept)
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
