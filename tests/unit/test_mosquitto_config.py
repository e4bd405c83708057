"""mosquitto.conf as the service writes it: listeners, client certificates only as identity, no
injected lines, persistent sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotdefender.brokers.listeners import ListenerSettings
from iotdefender.brokers.mosquitto.config import Persistence, PluginOptions, render_config


def options(auth: str = "none", **kwargs) -> PluginOptions:  # type: ignore[no-untyped-def]
    return PluginOptions(library=Path("/cache/p.so"), service_id="svc", service_secret="s3", auth=auth, acl="own",
                         **kwargs)


def test_plain_listener_and_plugin_options():
    text = render_config(ListenerSettings("127.0.0.1", 1883), options(report_traffic=False))
    lines = text.splitlines()
    assert "listener 1883 127.0.0.1" in lines
    assert "allow_zero_length_clientid false" in lines and "persistence false" in lines
    assert "plugin /cache/p.so" in lines and "plugin_opt_report_traffic 0" in lines
    assert not any(line.startswith(("certfile", "cafile", "require_certificate")) for line in lines)


@pytest.mark.parametrize("auth, required", [("cert", "true"), ("password", "false")])
def test_client_certificates_are_required_only_when_they_are_the_identity(auth, required):
    listeners = ListenerSettings("0.0.0.0", 1883, 8883, "/pki/ca.pem", "/pki/server.pem", "/pki/server.key")
    lines = render_config(listeners, options(auth)).splitlines()
    tls = lines[lines.index("listener 8883 0.0.0.0"):]
    assert "cafile /pki/ca.pem" in tls and f"require_certificate {required}" in tls


def test_a_value_cannot_add_a_line():
    with pytest.raises(ValueError):
        render_config(ListenerSettings("127.0.0.1\nplugin /tmp/evil.so", 1883), options())


def test_an_acl_file_is_mosquittos_and_the_plugin_asks_it_about_application_topics(tmp_path):
    lines = render_config(ListenerSettings("127.0.0.1", 1883), options(acl_file=tmp_path / "devices.acl")).splitlines()
    assert f"acl_file {(tmp_path / 'devices.acl').resolve()}" in lines and "plugin_opt_app_acl file" in lines
    plain = render_config(ListenerSettings("127.0.0.1", 1883), options()).splitlines()
    assert not any(line.startswith(("acl_file", "plugin_opt_app_acl")) for line in plain)


@pytest.mark.parametrize("expiry_s, autosave_s, hours, autosave", [
    (3600.0, 60.0, 1, 60),  # AWS's hour; a minute of sessions at most lost to a crash of Mosquitto itself
    (3600.0 / 30, 60.0 / 30, 1, 2),  # --time-scale 30: Mosquitto counts the expiry in whole hours
    (3600.0 / 0.5, 60.0 / 3600, 2, 1),
    (7200.5, 60.0, 3, 60),
])
def test_persistent_sessions_are_saved_in_the_runtime_directory(tmp_path, expiry_s, autosave_s, hours, autosave):
    text = render_config(ListenerSettings("127.0.0.1", 1883), options(), Persistence(tmp_path, expiry_s, autosave_s))
    lines = text.splitlines()
    assert "persistence true" in lines and "persistence false" not in lines
    assert f"persistence_location {tmp_path.resolve()}/" in lines and "persistence_file mosquitto.db" in lines
    assert f"persistent_client_expiration {hours}h" in lines and f"autosave_interval {autosave}" in lines
    assert lines.index("persistence true") < lines.index("listener 1883 127.0.0.1")  # global, not per listener
