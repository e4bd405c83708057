"""The few MQTT 3.1.1 packets a Device Defender device sends and receives, as bytes.

The fleet load generator needs one connection per device bound to a chosen loopback source
address (so that 15,000 connections are not capped by one source/destination pair's ephemeral
ports). gmqtt 0.8.0 opens its socket with ``loop.create_connection(host, port, ssl=...)`` and has
no way to pass ``local_addr``, and paho needs a thread or a socket poll per client; so the load
generator speaks the protocol itself over asyncio transports. Only what a device does is here:
CONNECT, SUBSCRIBE, PUBLISH at QoS 1 (and 0), PUBACK, and parsing what a broker sends back.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

CONNACK, PUBLISH, PUBACK, SUBACK, PINGRESP = 2, 3, 4, 9, 13


def _length(n: int) -> bytes:
    """Remaining length, MQTT's variable-length integer (§2.2.3)."""
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(raw)) + raw


def connect(client_id: str, keepalive: int, clean_session: bool = True) -> bytes:
    """CONNECT with protocol level 4 (3.1.1), no will, no credentials."""
    body = _string("MQTT") + bytes([4, 0x02 if clean_session else 0]) + struct.pack("!H", keepalive) + _string(client_id)
    return bytes([0x10]) + _length(len(body)) + body


def subscribe(packet_id: int, topic_filter: str, qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + _string(topic_filter) + bytes([qos])
    return bytes([0x82]) + _length(len(body)) + body


def publish_header(topic: str, packet_id: int, payload_length: int) -> bytes:
    """Fixed and variable header of a QoS 1 PUBLISH; the payload follows it on the wire."""
    variable = _string(topic) + struct.pack("!H", packet_id)
    return bytes([0x32]) + _length(len(variable) + payload_length) + variable


def publish_qos0(topic: str, payload: bytes) -> bytes:
    """A whole QoS 0 PUBLISH (no packet id): what a flooding device writes (bench/report_flood.py)."""
    body = _string(topic) + payload
    return bytes([0x30]) + _length(len(body)) + body


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", packet_id)


def disconnect() -> bytes:
    return b"\xe0\x00"


class Packet:
    """One received packet: its type, flags and body (everything after the fixed header)."""

    __slots__ = ("kind", "flags", "body")

    def __init__(self, kind: int, flags: int, body: bytes) -> None:
        self.kind, self.flags, self.body = kind, flags, body

    def publish_parts(self) -> tuple[str, int | None, bytes]:
        """(topic, packet id or None at QoS 0, payload) of a PUBLISH."""
        (topic_length,) = struct.unpack_from("!H", self.body, 0)
        topic = self.body[2:2 + topic_length].decode()
        offset = 2 + topic_length
        packet_id = None
        if self.flags & 0x06:
            (packet_id,) = struct.unpack_from("!H", self.body, offset)
            offset += 2
        return topic, packet_id, self.body[offset:]


class Reader:
    """Splits a byte stream into packets (data arrives in arbitrary chunks)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Packet]:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 2:
            length, multiplier, index = 0, 1, 1
            while True:
                if index >= len(buffer):
                    return
                byte = buffer[index]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                index += 1
                if not byte & 0x80:
                    break
            end = index + length
            if len(buffer) < end:
                return
            first = buffer[0]
            packet = Packet(first >> 4, first & 0x0F, bytes(buffer[index:end]))
            del buffer[:end]
            yield packet
