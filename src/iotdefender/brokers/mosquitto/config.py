"""mosquitto.conf for the default broker: the listeners the operator asked for, and the plugin.

Settings chosen for a fleet (docs/architecture.md): no persistence (the service stores what
matters; sessions are rebuilt by reconnecting devices), only errors and warnings logged (one line
per connection would be 15,000 lines on a restart), Nagle off (replies are small and awaited), and
a deep queue for the service's own connection, which receives every report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from iotdefender.brokers.listeners import ListenerSettings

SERVICE_QUEUE = 100_000  # messages Mosquitto holds for a slow client before dropping (QoS 1)
SERVICE_INFLIGHT = 1_000  # unacknowledged QoS 1 deliveries per client


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


def _value(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"a mosquitto.conf value cannot span lines: {text!r}")
    return text


def render_config(listeners: ListenerSettings, plugin: PluginOptions) -> str:
    lines = ["# Written by iotdefender serve at each start; edits are lost."]
    if os.geteuid() == 0:
        # Mosquitto started as root switches to the user "mosquitto" unless told otherwise, and
        # could then not read this file's directory; as any other user it stays who it is.
        lines.append("user root")
    lines += [
        "per_listener_settings false",
        "allow_anonymous true",  # the plugin decides who connects
        "allow_zero_length_clientid false",  # identity is the client id: it must be given
        "persistence false",
        "log_dest stdout",
        "log_type error",
        "log_type warning",
        "log_timestamp false",
        "connection_messages false",
        "set_tcp_nodelay true",
        f"max_queued_messages {SERVICE_QUEUE}",
        f"max_inflight_messages {SERVICE_INFLIGHT}",
        f"plugin {_value(str(plugin.library))}",
        f"plugin_opt_service_id {_value(plugin.service_id)}",
        f"plugin_opt_service_secret {_value(plugin.service_secret)}",
        f"plugin_opt_auth {plugin.auth}",
        f"plugin_opt_acl {plugin.acl}",
        f"plugin_opt_report_traffic {1 if plugin.report_traffic else 0}",
        f"plugin_opt_flush_ms {plugin.flush_ms}",
    ]
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
