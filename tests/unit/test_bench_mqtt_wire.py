"""The load generator's MQTT 3.1.1 packets (bench/mqtt_wire.py) against the specification."""

from __future__ import annotations

from bench import mqtt_wire


def test_remaining_length_is_mqtts_variable_length_integer() -> None:
    # §2.2.3: 321 is encoded as 0xC1 0x02; 127 in one byte, 128 in two.
    assert mqtt_wire._length(321) == b"\xc1\x02"
    assert mqtt_wire._length(127) == b"\x7f"
    assert mqtt_wire._length(128) == b"\x80\x01"


def test_connect_names_the_protocol_level_and_client_id() -> None:
    packet = mqtt_wire.connect("dev7", keepalive=1200)
    assert packet[0] == 0x10
    assert packet[2:10] == b"\x00\x04MQTT\x04\x02"  # level 4 = 3.1.1, clean session
    assert packet[10:12] == (1200).to_bytes(2, "big")
    assert packet[12:] == b"\x00\x04dev7"


def test_a_qos1_publish_split_into_arbitrary_chunks_parses_back() -> None:
    payload = bytes(range(256)) * 8  # 2 KB: a two-byte remaining length
    stream = mqtt_wire.publish_header("$aws/things/dev7/defender/metrics/json", 513, len(payload)) + payload
    stream += mqtt_wire.puback(9)
    reader = mqtt_wire.Reader()
    packets = [p for i in range(len(stream)) for p in reader.feed(stream[i:i + 1])]
    assert [p.kind for p in packets] == [mqtt_wire.PUBLISH, mqtt_wire.PUBACK]
    assert packets[0].publish_parts() == ("$aws/things/dev7/defender/metrics/json", 513, payload)
    assert packets[1].body == b"\x00\x09"


def test_a_qos0_publish_has_no_packet_id() -> None:
    body = b"\x00\x03a/b" + b"hello"
    (packet,) = mqtt_wire.Reader().feed(b"\x30" + mqtt_wire._length(len(body)) + body)
    assert packet.publish_parts() == ("a/b", None, b"hello")
