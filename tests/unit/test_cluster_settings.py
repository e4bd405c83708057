"""Cluster mode's flags: what `serve --cluster-url` refuses before starting anything, and node ids."""

from __future__ import annotations

import argparse
import re

import pytest

from iotdefender.cluster.node_id import new_node_id
from iotdefender.pipeline.report_replies import reply_subject
from iotdefender.cluster_serve import cluster_roles
from iotdefender.service import ConfigurationError
from iotdefender.settings import add_serve_arguments, settings_from

PG = "postgresql://u@h/db"


def settings(*argv: str):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(list(argv)))


def test_all_three_roles_by_default_and_a_subset_when_given():
    assert settings().cluster_url is None  # without the flag: the single box, unchanged
    assert cluster_roles(settings("--cluster-url", "nats://h:4222", "--database-url", PG)) == {
        "broker", "api", "detect"}
    assert cluster_roles(settings("--cluster-url", "nats://h1:4222,nats://h2:4222", "--database-url", PG,
                                  "--roles", "detect, api")) == {"detect", "api"}
    assert settings("--cluster-url", "nats://h1:1, nats://h2:2").cluster_urls == ["nats://h1:1", "nats://h2:2"]
    assert cluster_roles(settings("--cluster-url", "nats://h:4222", "--database-url", PG, "--roles", "api",
                                  "--nats-events-url", "nats://s@h:4222", "--nats-monitor-url", "http://h:8222")) == {
        "api"}  # an external NATS broker's events: read by one node at a time (docs/cluster.md)


@pytest.mark.parametrize("argv, says", [
    (("--cluster-url", "nats://h:4222"), "needs --database-url postgresql"),
    (("--cluster-url", "nats://h:4222", "--database-url", "sqlite:///x.db"), "needs --database-url postgresql"),
    (("--cluster-url", "nats://h:4222", "--database-url", PG, "--roles", "broker,ingest"), "unknown role(s) ingest"),
    (("--cluster-url", "nats://h:4222", "--database-url", PG, "--roles", ","), "at least one"),
    (("--cluster-url", "h:4222", "--database-url", PG), "expected nats://"),
    (("--cluster-url", "nats://h:4222", "--database-url", PG, "--nats-events-url", "nats://s@h:4222"),
     "needs --nats-monitor-url"),
    (("--cluster-url", "nats://h:4222", "--database-url", PG, "--nats-events-url", "nats://s@h:4222",
      "--nats-monitor-url", "http://h:8222", "--roles", "detect"), "give it to broker or api nodes"),
    (("--cluster-url", "nats://h:4222", "--database-url", PG, "--cluster-lease-ttl", "0.5"),
     "--cluster-lease-ttl: expected seconds from 1 to 300, got 0.5"),
    (("--cluster-url", "nats://h:4222", "--database-url", PG, "--cluster-lease-ttl", "nan"),
     "--cluster-lease-ttl: expected seconds from 1 to 300, got nan"),
    (("--cluster-url", "nats://h:4222", "--database-url", PG, "--cluster-outcome-timeout", "0"),
     "--cluster-outcome-timeout: expected seconds above 0 and at most 300, got 0"),
    (("--cluster-url", "nats://h:4222", "--database-url", PG, "--cluster-outcome-timeout", "-3"),
     "--cluster-outcome-timeout: expected seconds above 0 and at most 300, got -3"),
])
def test_what_cluster_mode_refuses(argv, says):
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        cluster_roles(settings(*argv))


def test_the_lease_ttl_and_the_outcome_wait_are_flags():
    assert (settings().cluster_lease_ttl, settings().cluster_outcome_timeout) == (5.0, 10.0)
    given = settings("--cluster-url", "nats://h:4222", "--database-url", PG, "--cluster-lease-ttl", "8",
                     "--cluster-outcome-timeout", "15")
    assert cluster_roles(given) and (given.cluster_lease_ttl, given.cluster_outcome_timeout) == (8.0, 15.0)


def test_a_node_started_without_nats_says_so_instead_of_waiting_forever():
    import asyncio

    from iotdefender.cluster_serve import connect
    from tests.support.processes import free_port

    url = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ConfigurationError, match=re.escape(f"cannot connect to NATS at {url} (no server answered")):
        asyncio.run(connect([url], "n1", lambda: None, first_connect_s=1.0))


def test_node_ids_are_unique_per_process_and_valid_subject_tokens():
    first, second = new_node_id("web.example.com", 41), new_node_id("web.example.com", 41)
    assert first != second and first.startswith("web-example-com-41-")
    assert re.fullmatch(r"[A-Za-z0-9-]+", new_node_id("höst_name.local"))
    assert reply_subject(first).count(".") == 2  # one token: no dot of the host name leaks into the subject


def test_nats_passwords_stay_out_of_logs_and_error_messages():
    """The `ready` line printed --cluster-url as given, password and all (the database URL's
    password was already masked)."""
    given = settings("--cluster-url", "nats://ops:s3cret@h1:4222, tls://h2:4222,nats://u:p%40ss@[::1]:5",
                     "--database-url", PG)
    assert given.cluster_url_for_logs == "nats://ops:***@h1:4222,tls://h2:4222,nats://u:***@[::1]:5"
    with pytest.raises(ConfigurationError) as refused:
        cluster_roles(settings("--cluster-url", "http://ops:s3cret@h1:4222", "--database-url", PG))
    assert "s3cret" not in str(refused.value) and "http://ops:***@h1:4222" in str(refused.value)


def test_an_external_brokers_password_stays_out_of_the_ready_line():
    """The `ready` line's endpoint was the part of --mqtt-url after its last '@' (the scheme dropped
    when it had credentials, kept when it had none); now the URL with its password masked."""
    assert settings("--mqtt-url", "mqtts://svc:pa@ss@broker:8883").mqtt_url_for_logs == "mqtts://svc:***@broker:8883"
    assert settings("--mqtt-url", "mqtt://broker:1883").mqtt_url_for_logs == "mqtt://broker:1883"
