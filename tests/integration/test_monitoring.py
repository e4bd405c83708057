"""Registry facts looked up in bulk (MonitoringIndex.prime) equal the one-thing-at-a-time lookups,
on SQLite (one JSON array parameter) and PostgreSQL (one array parameter)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from iotdefender.api.app import ApiService
from iotdefender.api.credentials import CredentialStore
from iotdefender.controlplane.context import ServiceContext
from iotdefender.pipeline.monitoring import MonitoringIndex
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_prime_matches_single_lookups(backend, request):
    url = (request.getfixturevalue("postgres").create_database(f"prime{time.time_ns()}") if backend == "postgresql"
           else sqlite_url(Path(tempfile.mkdtemp())))
    engine = create_engine(url)
    upgrade_to_head(engine)
    ctx = ServiceContext(engine=engine, region="us-east-1", account_id="123456789012")
    api = ApiService(ctx, CredentialStore([]))
    api.invoke("CreateThingGroup", {"thingGroupName": "parent"})
    api.invoke("CreateThingGroup", {"thingGroupName": "child", "parentGroupName": "parent"})
    api.invoke("CreateThingGroup", {"thingGroupName": "other"})
    for i in range(8):
        api.invoke("CreateThing", {"thingName": f"t{i}"})
    for thing, group in (("t1", "child"), ("t2", "parent"), ("t2", "other"), ("t3", "other"), ("t5", "child")):
        api.invoke("AddThingToThingGroup", {"thingGroupName": group, "thingName": thing})
    # Beyond the 500 names of SQLite's chunks before, with names that need quoting in SQL or JSON.
    things = [f"t{i}" for i in range(8)] + ["unregistered-1", "unregistered-2", "o'brien", 'say "x"', "a,b",
                                            "back\\slash", "ünïcode", "[1]"] + \
        [f"unregistered-{n}" for n in range(3, 1200)]
    primed, plain = MonitoringIndex(engine, ctx.arn("")), MonitoringIndex(engine, ctx.arn(""))
    primed.prime(things + ["t1"])
    assert {t: primed.targets_of(t) for t in things} == {t: plain.targets_of(t) for t in things}
    assert ctx.arn("thinggroup/parent") in primed.targets_of("t1")  # through the child group
    assert ctx.arn("all/unregistered-things") in primed.targets_of("unregistered-1")
    assert ctx.arn("thinggroup/child") in primed.targets_of("t5") and ctx.arn("thinggroup/other") in primed.targets_of("t2")
    engine.dispose()
