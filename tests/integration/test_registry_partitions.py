"""Cluster mode: the registry keeps each thing's partition, so a detect node closing cloud-side
windows reads the registered names of its own partitions only (the whole registry at every window
before), on SQLite and PostgreSQL. Things registered without one (since the last round, or by a
node of the release before) are read too and picked by name, and get theirs a bounded number a round."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from iotdefender.api.app import ApiService
from iotdefender.api.credentials import CredentialStore
from iotdefender.cluster.partitions import partition_of
from iotdefender.controlplane.context import ServiceContext
from iotdefender.store import registry
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head, writing
from iotdefender.store.partition_selection import PartitionSelection
from iotdefender.store.schema import things


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_nodes_share_of_the_registry_is_read_by_partition_once_recorded(backend, request):
    url = (request.getfixturevalue("postgres").create_database(f"regparts{time.time_ns()}") if backend == "postgresql"
           else sqlite_url(Path(tempfile.mkdtemp())))
    engine = create_engine(url)
    upgrade_to_head(engine)
    api = ApiService(ServiceContext(engine=engine, region="us-east-1", account_id="123456789012"), CredentialStore([]))
    names = [f"device-{n}" for n in range(300)] + ["a:b", "x_y-z"]
    for name in names:
        api.invoke("CreateThing", {"thingName": name})
    mine = PartitionSelection(frozenset(range(0, 64, 3)), partition_of)
    expected = {name for name in names if mine(name)}
    assert 0 < len(expected) < len(names)

    def recorded() -> dict[str, int | None]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.select(things.c.name, things.c.partition)).all())

    with engine.connect() as conn:
        assert registry.thing_names(conn, mine) == expected  # none recorded yet: all read, picked by name
        assert registry.thing_names(conn) == set(names)
    rounds = 0
    while None in recorded().values():
        with writing(engine) as conn:
            assert registry.record_partitions(conn, partition_of, 100) <= 100
        rounds += 1
    assert rounds == 4 and recorded() == {name: partition_of(name) for name in names}
    api.invoke("CreateThing", {"thingName": "late-comer"})  # registered since: none recorded
    with engine.connect() as conn:
        read = conn.execute(sa.select(things.c.name).where(mine.where(things.c.partition))).scalars().all()
        assert len(read) == len(expected) + 1  # its partitions' rows and the one without, not the fleet
        assert registry.thing_names(conn, mine) == expected | ({"late-comer"} if mine("late-comer") else set())
    assert api.invoke("DescribeThing", {"thingName": names[0]})["thingName"] == names[0]
    assert "partition" not in api.invoke("DescribeThing", {"thingName": names[0]})


def test_listthings_by_a_value_alone_is_decided_by_the_database(engine):
    """ListThings with ``attributeValue`` and no name: things with any attribute of that value (or
    starting with it), chosen in the database (SQLite's ``json_each``, PostgreSQL's
    ``json_each_text``): a rare value among many things used to read every row into Python."""
    api = ApiService(ServiceContext(engine=engine, region="us-east-1", account_id="123456789012"), CredentialStore([]))
    attributes = {"a": {"zone": "z1", "model": "m-1"}, "b": {"site": "z1"}, "c": {"zone": "z10"},
                  "d": {}, "e": {"zone": "z_x"}, "f": {"model": "z1x", "zone": "q"},
                  "g": {"z1": "k"}}
    for name, found in attributes.items():
        api.invoke("CreateThing", {"thingName": name, "attributePayload": {"attributes": found}})
    with engine.connect() as conn:
        def names(value: str, prefix: bool = False) -> list[str]:
            return [row.name for row in registry.scan_things(conn, None, None, None, value, prefix)]

        assert names("z1") == ["a", "b"]
        assert names("z1", prefix=True) == ["a", "b", "c", "f"]
        assert names("z_", prefix=True) == ["e"]  # a LIKE wildcard in the value is the character
        assert names("nothing") == []
        assert names("b", prefix=False) == []  # a thing's name is not an attribute
        assert names("k") == ["g"]  # an attribute's name is not its value: "z1" above is not g's
    listed = api.invoke("ListThings", {"attributeValue": "z1", "usePrefixAttributeValue": True, "maxResults": 2})
    assert [t["thingName"] for t in listed["things"]] == ["a", "b"] and listed["nextToken"]
    rest = api.invoke("ListThings", {"attributeValue": "z1", "usePrefixAttributeValue": True,
                                     "nextToken": listed["nextToken"]})
    assert [t["thingName"] for t in rest["things"]] == ["c", "f"]
