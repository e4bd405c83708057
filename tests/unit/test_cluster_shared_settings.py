"""The flags every cluster node must share: what is compared, and how a difference is told."""

from __future__ import annotations

from iotdefender.cluster.shared_settings import differences, shared_values
from iotdefender.settings import Settings


def test_periods_are_compared_as_they_are_in_effect():
    scaled = shared_values(Settings(time_scale=60.0))
    assert scaled["--metrics-window"] == 5.0 and scaled["--time-scale"] == 60.0  # 300 s / 60
    # The same window given directly is still another time scale: every other period differs.
    direct = shared_values(Settings(metrics_window=5.0))
    assert differences(direct, scaled, "n2")[:2] == [
        "--invalidation-period is 172800.0 on this node but 2880.0 on node n2",
        "--metric-retention is 1209600.0 on this node but 20160.0 on node n2"]


def test_equal_values_differ_in_nothing_and_a_flag_the_other_node_lacks_is_not_compared():
    values = shared_values(Settings())
    assert differences(values, dict(values), "n2") == []
    older = {flag: value for flag, value in values.items() if flag != "--cloud-metrics"}  # another version
    assert differences(values, older, "n2") == []
    assert differences(values, {**older, "--region": "eu-west-1"}, "n2") == [
        "--region is 'us-east-1' on this node but 'eu-west-1' on node n2"]


def test_broker_nodes_compare_the_device_policy_by_the_acl_files_content(tmp_path):
    (tmp_path / "a.acl").write_text("pattern readwrite devices/%c/#\n")
    (tmp_path / "b.acl").write_text("pattern readwrite devices/%c/#\n")  # same content, another path
    (tmp_path / "c.acl").write_text("pattern readwrite #\n")
    a, b, c = (shared_values(Settings(mqtt_acl_file=tmp_path / f"{n}.acl")) for n in "abc")
    assert differences(a, b, "n2") == []
    assert [d.split(" is ")[0] for d in differences(a, c, "n2")] == ["--mqtt-acl-file"]
    assert shared_values(Settings())["--mqtt-acl-file"] == "none"
    assert differences(shared_values(Settings()), shared_values(Settings(mqtt_acl="any")), "n2") == [
        "--mqtt-acl is 'own' on this node but 'any' on node n2"]
    # Nodes without a Mosquitto of their own do not publish it: an api node has no device policy.
    assert "--mqtt-acl-file" not in shared_values(Settings(roles="api,detect", mqtt_acl_file=tmp_path / "a.acl"))
    assert "--mqtt-acl-file" not in shared_values(Settings(mqtt_url="mqtt://broker:1883"))


def test_broker_nodes_compare_how_devices_authenticate():
    """A device refused as unregistered on one node must not connect on another (or with a password
    on one and a certificate on the other)."""
    signed = shared_values(Settings(mqtt_auth="cert"))
    registered = shared_values(Settings(mqtt_auth="cert", mqtt_certificates="registered"))
    assert differences(signed, registered, "n2") == [
        "--mqtt-certificates is 'signed' on this node but 'registered' on node n2"]
    assert differences(shared_values(Settings(mqtt_auth="password")), signed, "n2") == [
        "--mqtt-auth is 'password' on this node but 'cert' on node n2"]  # --mqtt-certificates: cert only
    assert "--mqtt-auth" not in shared_values(Settings(roles="api,detect", mqtt_auth="cert"))
