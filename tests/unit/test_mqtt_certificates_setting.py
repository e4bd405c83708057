"""``--mqtt-certificates``: which device certificates the embedded broker lets connect."""

from __future__ import annotations

import argparse

import pytest

from iotdefender.service import ConfigurationError, mqtt_auth
from iotdefender.settings import add_serve_arguments, settings_from

TLS = ("--mqtt-tls-port", "8883", "--mqtt-ca", "ca.pem")


def settings(*argv: str):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(list(argv)))


def test_any_certificate_the_ca_signed_by_default_and_only_registered_ones_when_asked():
    assert settings().mqtt_certificates == "signed"
    assert mqtt_auth(settings("--mqtt-auth", "cert", *TLS, "--mqtt-certificates", "registered")) == "cert"


@pytest.mark.parametrize("argv", [
    ("--mqtt-certificates", "registered"),  # loopback's default: no authentication
    ("--mqtt-auth", "none", "--mqtt-certificates", "registered"),
    ("--mqtt-auth", "cert", *TLS, "--mqtt-certificates", "registered", "--mqtt-url", "mqtt://h:1883"),
])
def test_registered_only_is_refused_where_no_certificate_is_checked(argv):
    """Only the embedded broker's plugin checks certificates, and only under --mqtt-auth cert: the
    setting would otherwise look enforced and be ignored."""
    with pytest.raises(ConfigurationError, match="--mqtt-certificates registered needs --mqtt-auth cert"):
        mqtt_auth(settings(*argv))


def test_an_unknown_choice_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        settings("--mqtt-certificates", "all")
    assert "invalid choice: 'all'" in capsys.readouterr().err
