"""mosquitto.conf for the default broker: the listeners the operator asked for, and the plugin.

Settings chosen for a fleet (docs/architecture.md): persistent sessions saved to disk (``Persistence``),
only errors and warnings logged (one line per connection would be 15,000 lines on a restart), Nagle
off (replies are small and awaited), and what Mosquitto holds for a client that does not read bounded
as AWS IoT Core bounds it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from iotdefender.brokers.listeners import ListenerSettings

#: Messages Mosquitto holds for a client beyond those in flight before it drops the next ones (one
#: setting for every client). The service's own connection needs few: the plugin sends it at most
#: ``BATCHES_IN_FLIGHT`` report and as many event batches it has not read yet (defender_plugin.c,
#: "flow"). It was 100,000
#: while that connection had a batch per pass of Mosquitto's loop, and so for every device: ten
#: devices subscribed to their replies and never reading them, flooding their report topics, had
#: 600 MB of answers queued (bench/report_flood.py --subscribed). 1,000 is Mosquitto's default.
QUEUED_MESSAGES = 1_000
#: Unacknowledged QoS 1 deliveries per client (and the Receive Maximum Mosquitto announces to MQTT 5
#: clients): AWS IoT Core's 100, past which "no new messages are sent to the client until the client
#: acknowledges the in-flight messages" (its message broker quotas).
INFLIGHT_MESSAGES = 100
#: Payload bytes of QoS 1 messages per client, in flight and queued (each bound, in Mosquitto's
#: ``max_inflight_bytes`` and ``max_queued_bytes``): the counts above bound replies (a few hundred
#: bytes each) but not application messages of up to ``MAX_PACKET_BYTES``. Without it an outside-in
#: test had one offline session subscribed to ``#`` hold 1,000 messages of 100 KB (8 -> 104 MB), and
#: online subscribers that did not read 100 MB each. The service's own connection gets QoS 0 batches
#: only, which these do not count (Mosquitto counts a QoS 0 message's bytes only until it is written).
#: Not bounded by Mosquitto 2.0: QoS 0 deliveries to a connected client that does not read (up to
#: ``QUEUED_MESSAGES`` packets).
QUEUED_BYTES = 4 * 1024 * 1024
#: Report batches, and event batches, the plugin sends the service before it has read them
#: (defender_plugin.c, "flow"); the service says which it has read with its next replies, or alone
#: after an eighth of them (frames.ReplyBatcher). Measured with bench/pipeline_ab.py (5,000 devices,
#: 3,000 reports/s): with 16 the plugin waited for the service's word between batches (answers' p99
#: 98 -> 445 ms, ceiling -16%); told after every batch instead, the service spent 9% more CPU per
#: report on those messages.
BATCHES_IN_FLIGHT = 64
#: Bytes of reports the plugin holds back while the service reads slower than they come; a report
#: past them is answered ServiceOverloaded by the broker (defender_plugin.c, "flow"). 64 MB is 10 s
#: and more of reports at the rates the benchmarks reach on one machine.
REPORTS_HELD_BYTES = 64 * 1024 * 1024
#: The largest MQTT packet a client may send; a larger one closes its connection when its header
#: is read, before its body is. AWS IoT Core takes payloads of at most 128 KB, and a report a
#: little over that is still answered ``PayloadTooLarge`` by the service (ingest/report.py), so the
#: bound is twice that. Without it Mosquitto read a 200 MB PUBLISH whole (208 MB of memory), its
#: loop held every other client's messages meanwhile, and the service's own connection lost its
#: heartbeat (found by an outside-in test).
MAX_PACKET_BYTES = 256 * 1024
#: Reports of one thing the broker hands to the service before the service has answered them; a
#: report beyond is answered ``rejected`` Throttled by the plugin itself (defender_plugin.c). A device
#: reporting as AWS's agents do has one waiting at most (a report every 5 minutes, answered in
#: milliseconds), and a few more after a reconnection (paho resends what was in flight); a device
#: flooding its report topic gets this many answered at a time, so it can no longer fill the service's
#: connection and have the broker drop other devices' reports with it (an outside-in test: 55 of 400
#: honest reports lost, acknowledged and never answered, to 10 devices flooding at --time-scale 60).
REPORTS_AWAITING_ANSWER = 32


@dataclass(frozen=True)
class PluginOptions:
    library: Path
    service_id: str
    service_secret: str
    auth: str  # none | password | cert
    acl: str  # own | any
    password_file: Path | None = None
    acl_file: Path | None = None  # Mosquitto's acl_file, for application (non-`$`) topics
    report_traffic: bool = True  # message sent/received events (cloud-side metrics)
    flush_ms: int = 50
    publish_rate: float = 0.0  # PUBLISHes a second per connection (defender_plugin.c); 0: no limit
    report_window: int = REPORTS_AWAITING_ANSWER  # a thing's reports awaiting the service's answer; 0: no limit
    max_subscriptions: int = 0  # topic filters a connection may hold (defender_plugin.c); 0: no limit
    certificates: str = "signed"  # signed | registered: which certificates connect (defender_plugin.c)


@dataclass(frozen=True)
class Persistence:
    """Mosquitto's saved state: the sessions of clients connected with clean session off (their
    subscriptions and the QoS 1 messages queued for them) and retained messages, in
    ``directory/mosquitto.db``, written at every graceful stop and every ``autosave_s``, read at start.

    AWS IoT keeps a persistent session for an hour after its device disconnects, and tells devices to
    subscribe again only when the CONNACK says the session is gone: without persistence, a restart of
    the service lost every session and a device relying on its subscriptions no longer heard its replies.
    Mosquitto counts ``persistent_client_expiration`` in whole hours, so ``session_expiry_s`` is
    rounded up to one (--time-scale cannot make it shorter than an hour)."""

    directory: Path
    session_expiry_s: float = 3600.0  # AWS IoT's default for a persistent session
    autosave_s: float = 60.0  # what a crash of Mosquitto itself can lose (a stop saves everything)

    def lines(self) -> list[str]:
        hours = max(1, math.ceil(self.session_expiry_s / 3600.0 - 1e-9))
        return ["persistence true",
                f"persistence_location {_value(str(self.directory.resolve()))}/",
                "persistence_file mosquitto.db",
                f"autosave_interval {max(1, round(self.autosave_s))}",
                f"persistent_client_expiration {hours}h"]


def _value(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"a mosquitto.conf value cannot span lines: {text!r}")
    return text


def render_config(listeners: ListenerSettings, plugin: PluginOptions, persistence: Persistence | None = None) -> str:
    """``persistence`` None: sessions live only as long as the Mosquitto process."""
    lines = ["# Written by iotdefender serve at each start; edits are lost."]
    if os.geteuid() == 0:
        # Mosquitto started as root switches to the user "mosquitto" unless told otherwise, and
        # could then not read this file's directory; as any other user it stays who it is.
        lines.append("user root")
    lines += [
        "per_listener_settings false",
        "allow_anonymous true",  # the plugin decides who connects
        "allow_zero_length_clientid false",  # identity is the client id: it must be given
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_timestamp false",
        "connection_messages false",
        "set_tcp_nodelay true",
        f"max_queued_messages {QUEUED_MESSAGES}",
        f"max_inflight_messages {INFLIGHT_MESSAGES}",
        f"max_inflight_bytes {QUEUED_BYTES}",
        f"max_queued_bytes {QUEUED_BYTES}",
        f"max_packet_size {MAX_PACKET_BYTES}",
        f"plugin {_value(str(plugin.library))}",
        f"plugin_opt_service_id {_value(plugin.service_id)}",
        f"plugin_opt_service_secret {_value(plugin.service_secret)}",
        f"plugin_opt_auth {plugin.auth}",
        f"plugin_opt_acl {plugin.acl}",
        f"plugin_opt_certificates {plugin.certificates}",
        f"plugin_opt_report_traffic {1 if plugin.report_traffic else 0}",
        f"plugin_opt_flush_ms {plugin.flush_ms}",
        f"plugin_opt_publish_rate {plugin.publish_rate:g}",
        f"plugin_opt_report_window {plugin.report_window}",
        f"plugin_opt_max_subscriptions {plugin.max_subscriptions}",
        f"plugin_opt_reports_held_bytes {REPORTS_HELD_BYTES}",
        f"plugin_opt_batches_in_flight {BATCHES_IN_FLIGHT}",
    ]
    lines += persistence.lines() if persistence is not None else ["persistence false"]
    if plugin.password_file is not None:
        lines.append(f"plugin_opt_password_file {_value(str(plugin.password_file.resolve()))}")
    if plugin.acl_file is not None:
        # Mosquitto parses and applies the file; the plugin asks it about application topics only
        # (the `$` topics stay the plugin's, whatever the file says: defender_plugin.c).
        lines += [f"acl_file {_value(str(plugin.acl_file.resolve()))}", "plugin_opt_app_acl file"]
    lines += ["", f"listener {listeners.port} {_value(listeners.host)}"]
    if listeners.tls_port is not None:
        lines += ["", f"listener {listeners.tls_port} {_value(listeners.host)}",
                  f"certfile {_value(str(Path(listeners.cert_file or '').resolve()))}",
                  f"keyfile {_value(str(Path(listeners.key_file or '').resolve()))}"]
        if listeners.ca_file:
            # Client certificates are asked for only when they are the identity; Mosquitto cannot
            # make them optional.
            lines += [f"cafile {_value(str(Path(listeners.ca_file).resolve()))}",
                      f"require_certificate {'true' if plugin.auth == 'cert' else 'false'}"]
    return "\n".join(lines) + "\n"
