"""The report and reply batches exchanged with the Mosquitto plugin (length-prefixed frames)."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable

from iotdefender.brokers.mosquitto.frames import (
    ReplyBatcher,
    decode_reports,
    encode_reply,
    encode_taken,
    report_batch_head,
)


TAKEN_EVERY = 8
RECEIVED_US = 1_796_000_000_123_456  # when the broker received it, microseconds since the epoch


def report_frame(encoding: bytes, thing: str, payload: bytes, received_us: int = RECEIVED_US) -> bytes:
    name = thing.encode()
    return struct.pack(">cHIQ", encoding, len(name), len(payload), received_us) + name + payload


def batch_head(instance: int = 7, number: int = 0, before: int = 0, replies_of: int = 0,
               replies_done: int = 0) -> bytes:
    return struct.pack(">IIIII", instance, number, before, replies_of, replies_done)


def test_reports_keep_every_byte_and_their_encoding():
    cbor = bytes([0xA1, 0x00, 0x00, 0xFF, 0x0A])  # NULs and newlines are payload, not separators
    batch = (batch_head() + report_frame(b"j", "cam-1", b'{"hed":{}}')
             + report_frame(b"c", "thermostat-é", cbor, RECEIVED_US + 1))
    assert list(decode_reports(batch)) == [("cam-1", "json", b'{"hed":{}}', 1_796_000_000.123456),
                                           ("thermostat-é", "cbor", cbor, 1_796_000_000.123457)]


def test_the_batch_head_says_which_plugin_which_batch_how_many_reports_came_before_and_the_last_reply_message():
    batch = batch_head(0xDEADBEEF, 41, 2**32 - 1, 0xC0FFEE, 9) + report_frame(b"j", "a", b"{}")
    assert report_batch_head(batch) == (0xDEADBEEF, 41, 2**32 - 1, 0xC0FFEE, 9)
    assert list(decode_reports(batch)) == [("a", "json", b"{}", RECEIVED_US / 1e6)]
    assert report_batch_head(b"\0\0") is None


def test_a_truncated_last_frame_is_dropped_and_the_others_kept():
    whole = report_frame(b"j", "a", b"{}")
    cut = report_frame(b"j", "b", b'{"x":1}')[:-2]
    assert list(decode_reports(batch_head() + whole + cut)) == [("a", "json", b"{}", RECEIVED_US / 1e6)]
    assert list(decode_reports(b"")) == []


SEQUENCE_HEAD = struct.pack(">BHI", 0xFE, 0, 8)  # defender_plugin.c's SEQUENCE_FRAME


CONFIRM = struct.pack(">BHI", 0xFC, 0, 0)  # defender_plugin.c's CONFIRM_FRAME


def numbered(sent: list[bytes], confirmed: list[int] | None = None) -> Callable[[bytes], None]:
    """A ``send`` that checks each message starts with its SEQUENCE frame, numbered 1, 2, 3... by
    one service process, and keeps what follows it; the numbers of those that end with a CONFIRM
    frame (which it strips) go to ``confirmed``."""
    seen: list[tuple[int, int]] = []

    def send(message: bytes) -> None:
        assert message[:7] == SEQUENCE_HEAD
        of, number = struct.unpack_from(">II", message, 7)
        assert (not seen or seen[-1][0] == of) and number == len(seen) + 1, (seen, of, number)
        seen.append((of, number))
        if message.endswith(CONFIRM):
            message = message[:-len(CONFIRM)]
            if confirmed is not None:
                confirmed.append(number)
        sent.append(message[15:])
    return send


def test_reply_frame_layout():
    frame = encode_reply("$aws/things/é/defender/metrics/json/accepted", b"{}", 1)
    topic = "$aws/things/é/defender/metrics/json/accepted".encode()
    assert frame == struct.pack(">BHI", 1, len(topic), 2) + topic + b"{}"


def test_replies_of_one_loop_iteration_leave_as_one_message():
    sent: list[bytes] = []

    async def scenario() -> None:
        batcher = ReplyBatcher(asyncio.get_running_loop(), numbered(sent))
        batcher.add("t/1", b"a", 1)
        batcher.add("t/2", b"b", 1)
        assert sent == []  # nothing leaves before the iteration ends
        await asyncio.sleep(0)
        assert sent == [encode_reply("t/1", b"a", 1) + encode_reply("t/2", b"b", 1)]
        batcher.add("t/3", b"c", 0)
        await asyncio.sleep(0)
        assert sent[1:] == [encode_reply("t/3", b"c", 0)]

    asyncio.run(scenario())


def test_the_taken_frame_is_a_reply_frame_of_qos_0xff_without_topic():
    """defender_plugin.c reads it as TAKEN_FRAME: topic length 0, payload the three numbers."""
    assert encode_taken(7, 2**32 + 3, 9) == struct.pack(">BHIIII", 0xFF, 0, 12, 7, 3, 9)


def test_the_latest_taken_frame_leaves_with_the_next_replies_or_alone_after_some_batches():
    """TAKEN frames ride on reply messages; alone (a message more) only once ``taken_every``
    batches were read with no reply to carry them, well before the plugin's unread would stop it."""
    sent: list[bytes] = []

    async def scenario() -> None:
        batcher = ReplyBatcher(asyncio.get_running_loop(), numbered(sent), taken_every=TAKEN_EVERY, in_flight=10)
        batcher.taken(encode_taken(1, 1, 0))
        await asyncio.sleep(0)
        assert sent == []  # one batch read, no reply: nothing sent for it yet
        batcher.add("t/1", b"a", 1)
        batcher.taken(encode_taken(1, 2, 0))  # says what the first said, and more
        await asyncio.sleep(0)
        assert sent == [encode_taken(1, 2, 0) + encode_reply("t/1", b"a", 1)]
        for n in range(1, TAKEN_EVERY + 1):  # batches read, no reply
            batcher.taken(encode_taken(1, 2 + n, 0))
            await asyncio.sleep(0)
            assert len(sent) == (1 if n < TAKEN_EVERY else 2)
        assert sent[1] == encode_taken(1, 2 + TAKEN_EVERY, 0)
        batcher.add("t/2", b"b", 1)
        await asyncio.sleep(0)
        assert sent[2] == encode_reply("t/2", b"b", 1)  # told already: not again

    asyncio.run(scenario())


def test_a_reply_from_another_thread_wakes_the_loop():
    sent: list[bytes] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        batcher = ReplyBatcher(loop, numbered(sent))
        thread = threading.Thread(target=batcher.add, args=("t/x", b"z", 1))
        thread.start()
        thread.join()
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.01)
        assert sent == [encode_reply("t/x", b"z", 1)]

    asyncio.run(scenario())


def test_replies_of_one_iteration_leave_in_messages_under_the_brokers_packet_limit():
    """The service's connection is bound by the broker's packet limit like any client: one message
    of 383 KB (twenty flooding devices' replies) closed it, and every device's answers were lost
    until it reconnected (an outside-in test). The frames stay whole and in order."""
    from iotdefender.brokers.mosquitto.config import MAX_PACKET_BYTES
    sent: list[bytes] = []
    frames = [encode_reply(f"t/{n}", bytes([n % 256]) * 10_000, 1) for n in range(100)]  # ~1 MB in all

    async def scenario() -> None:
        batcher = ReplyBatcher(asyncio.get_running_loop(), numbered(sent), in_flight=10)
        for n in range(100):
            batcher.add(f"t/{n}", bytes([n % 256]) * 10_000, 1)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert len(sent) > 1 and all(len(message) < MAX_PACKET_BYTES - 512 for message in sent)
    assert b"".join(sent) == b"".join(frames)


def test_a_reply_quoting_what_the_device_sent_is_bounded():
    """A rejection quoting a 120,000-character custom metric name was a 120 KB reply."""
    import json

    from iotdefender.ingest.replies import MAX_ERROR_MESSAGE_CHARS, reply_payload
    reply = json.loads(reply_payload("t", "json", 1, 0, ("UnknownCustomMetric", "x" * 120_000)))
    message = reply["statusDetails"]["ErrorMessage"]
    assert len(message) == MAX_ERROR_MESSAGE_CHARS and message.endswith("…")
    assert json.loads(reply_payload("t", "json", 1, 0, ("C", "short")))["statusDetails"]["ErrorMessage"] == "short"


def test_reply_messages_are_kept_until_the_plugin_published_them_and_sent_again_on_a_new_connection():
    """The answers to reports the service had read when its connection broke went into the broken
    connection (an outside-in test: 131 and 440 of 6,000 reports stored and never answered). Each
    message is kept until the plugin says it published it, and the rest go again, the same bytes
    (the plugin skips a number it had), once the service is connected again."""
    sent: list[bytes] = []

    async def scenario() -> None:
        batcher = ReplyBatcher(asyncio.get_running_loop(), sent.append, in_flight=3)
        for n in range(3):
            batcher.add(f"t/{n}", b"x", 1)
            await asyncio.sleep(0)
        assert [struct.unpack_from(">II", m, 7) for m in sent] == [(batcher.instance, n) for n in (1, 2, 3)]
        batcher.published(batcher.instance ^ 1, 3)  # another process of the service's: not ours
        batcher.published(batcher.instance, 1)
        assert batcher.send_again() == 2 and sent[3:] == sent[1:3]
        batcher.published(batcher.instance, 3)
        assert batcher.send_again() == 0 and len(sent) == 5

    asyncio.run(scenario())


def test_while_the_plugin_has_not_taken_two_messages_the_replies_wait_and_leave_together():
    """Mosquitto reads one message of the service's connection a pass of its loop, and a pass took
    hundreds of milliseconds under a storm of TLS handshakes: a message per event-loop iteration
    queued in the socket, and every answer waited for all the messages before it (seconds). With two
    out unconfirmed, what comes meanwhile leaves in one message once the plugin takes one."""
    sent: list[bytes] = []
    confirmed: list[int] = []

    async def scenario() -> None:
        batcher = ReplyBatcher(asyncio.get_running_loop(), numbered(sent, confirmed))
        for n in range(6):  # six iterations, a reply each
            batcher.add(f"t/{n}", b"x", 1)
            await asyncio.sleep(0)
        assert sent == [encode_reply("t/0", b"x", 1), encode_reply("t/1", b"x", 1)]
        assert confirmed == [2]  # the message that filled the window asks for the word at once
        batcher.published(batcher.instance, 1)
        await asyncio.sleep(0)
        assert sent[2:] == [b"".join(encode_reply(f"t/{n}", b"x", 1) for n in range(2, 6))]
        batcher.published(batcher.instance, 3)  # all taken: the next reply leaves at once
        batcher.add("t/6", b"x", 1)
        await asyncio.sleep(0)
        assert sent[3:] == [encode_reply("t/6", b"x", 1)]

    asyncio.run(scenario())


def test_the_taken_frame_leaves_alone_even_past_the_window():
    """The plugin confirms replies in the report batches the TAKEN frame lets it send: held behind
    the window, the word and the confirmation would each wait for the other."""
    sent: list[bytes] = []

    async def scenario() -> None:
        batcher = ReplyBatcher(asyncio.get_running_loop(), numbered(sent), taken_every=TAKEN_EVERY, in_flight=1)
        batcher.add("t/0", b"x", 1)
        await asyncio.sleep(0)
        batcher.add("t/1", b"x", 1)
        for n in range(1, TAKEN_EVERY + 1):
            batcher.taken(encode_taken(1, n, 0))
            await asyncio.sleep(0)
        assert sent == [encode_reply("t/0", b"x", 1), encode_taken(1, TAKEN_EVERY, 0)]
        batcher.published(batcher.instance, 2)
        await asyncio.sleep(0)
        assert sent[2:] == [encode_reply("t/1", b"x", 1)]

    asyncio.run(scenario())


def test_replies_waiting_past_the_bound_are_dropped_oldest_first_and_counted():
    from iotdefender.brokers.mosquitto.frames import REPLIES_NOT_SENT
    sent: list[bytes] = []
    frame = len(encode_reply("t/0", b"x", 1))

    async def scenario() -> None:
        batcher = ReplyBatcher(asyncio.get_running_loop(), numbered(sent), in_flight=1, kept_bytes=3 * frame)
        batcher.add("t/first", b"x", 1)
        await asyncio.sleep(0)  # out, unconfirmed: the plugin's connection is down
        before = REPLIES_NOT_SENT._value.get()
        for n in range(10):
            batcher.add(f"t/{n}", b"x", 1)
        await asyncio.sleep(0)
        assert REPLIES_NOT_SENT._value.get() - before == 7
        batcher.published(batcher.instance, 1)
        await asyncio.sleep(0)
        assert sent[1:] == [b"".join(encode_reply(f"t/{n}", b"x", 1) for n in (7, 8, 9))]

    asyncio.run(scenario())


def test_commands_leave_with_the_replies_in_their_order_and_are_never_dropped():
    """A bulk revocation's commands, a message each on the control topic, took Mosquitto's reads of
    the service's connection (one message a pass of its loop) from the replies: they ride in the
    reply messages now, as COMMAND frames ("qos" 0xfd, no topic), in order. Past the bound on what
    waits, replies are dropped, a revocation never."""
    from iotdefender.brokers.mosquitto.frames import encode_command
    sent: list[bytes] = []
    reply = encode_reply("t/0", b"x", 1)

    async def scenario() -> None:
        kept = len(encode_command(b"kick\0cam-1")) + 2 * len(reply)  # the command and two replies
        batcher = ReplyBatcher(asyncio.get_running_loop(), numbered(sent), in_flight=1, kept_bytes=kept)
        batcher.add("t/0", b"x", 1)
        await asyncio.sleep(0)  # out, unconfirmed
        batcher.add("t/1", b"x", 1)
        batcher.command(b"kick\0cam-1")
        for n in range(2, 6):
            batcher.add(f"t/{n}", b"x", 1)
        batcher.published(batcher.instance, 1)
        await asyncio.sleep(0)
        assert sent == [reply, encode_command(b"kick\0cam-1") + encode_reply("t/4", b"x", 1)
                        + encode_reply("t/5", b"x", 1)]

    assert encode_command(b"kick\0cam-1") == struct.pack(">BHI", 0xFD, 0, 10) + b"kick\0cam-1"
    asyncio.run(scenario())
