"""The monitoring index never keeps a snapshot of the control plane read before a change it was
told of: a read that began before an attach and ended after the attach's ``invalidate`` would
otherwise be cached, and the device would stay unmonitored until the next change (seen end to end:
a profile attached while the cloud-side window closer was reading the snapshot gave its devices no
datapoint at all for as long as the test ran)."""

from __future__ import annotations

from typing import Any

from iotdefender.pipeline import monitoring as monitoring_module
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.service import build_api
from iotdefender.settings import Settings

ALL_THINGS = "arn:aws:iot:us-east-1:123456789012:all/things"


def test_a_snapshot_read_across_a_change_is_not_kept(tmp_path, monkeypatch):
    api = build_api(Settings(data_dir=tmp_path))
    api.invoke("CreateSecurityProfile", {"securityProfileName": "p", "behaviors": [
        {"name": "sent", "metric": "aws:num-messages-sent",
         "criteria": {"comparisonOperator": "less-than", "value": {"count": 100}}}]})
    index = MonitoringIndex(api.context.engine, api.context.arn(""))
    read = monitoring_module.profiles.attachments

    def attached_meanwhile(conn: Any) -> dict[str, list[str]]:
        """The attachments as they were; then the attach commits and tells the index, as the API does."""
        before = read(conn)
        monkeypatch.setattr(monitoring_module.profiles, "attachments", read)
        api.invoke("AttachSecurityProfile", {"securityProfileName": "p", "securityProfileTargetArn": ALL_THINGS})
        index.invalidate()
        return before

    monkeypatch.setattr(monitoring_module.profiles, "attachments", attached_meanwhile)
    assert index.profiles_for("dev-1") == []  # that read's answer, from before the attach
    assert [p["name"] for p in index.profiles_for("dev-1")] == ["p"]
