"""Mosquitto's own log lines, relayed into the service's log: a flood of them is a few lines."""

from __future__ import annotations

import collections
import io
import types

from structlog.testing import capture_logs

from iotdefender.brokers.mosquitto.broker import MOSQUITTO_LINES_BURST, MosquittoBroker


def test_a_flood_of_one_kind_of_mosquitto_line_is_relayed_a_burst_at_a_time():
    """A device reusing a QoS 2 packet id made Mosquitto write 16,000 lines a second, and failed TLS
    handshakes from anyone 2,700, each relayed as a line of the service's (an outside-in test)."""
    flood = b"".join(b"Warning: Reused message ID 1 from client-%d detected. Clearing from storage.\n" % n
                     for n in range(5000))
    tls = b"".join(b"OpenSSL Error[0]: error:0A00010B:SSL routines::wrong version number\n" for _ in range(5000))
    # Before authentication, from anyone, with a client id of their choosing (a kind each, before).
    protocol = b"".join(b"Protocol error from anon-%d: password without username, closing connection.\n" % n
                        for n in range(5000))
    holder = types.SimpleNamespace(_output=collections.deque(maxlen=20))
    with capture_logs() as logged:
        MosquittoBroker._relay_output(holder, io.BytesIO(flood + tls + protocol + b"Error: a line of another kind\n"))  # type: ignore[arg-type]
    relayed = [entry["line"] for entry in logged if entry["event"] == "mosquitto"]
    assert len(relayed) == 3 * MOSQUITTO_LINES_BURST + 1, len(relayed)
    assert relayed[-1] == "Error: a line of another kind"  # another kind is not held back by the flood
    assert list(holder._output)[-1] == "Error: a line of another kind"  # the exit diagnosis keeps the last lines
