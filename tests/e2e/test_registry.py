"""The thing registry end to end: things, thing groups, hierarchy and membership, through boto3."""

from __future__ import annotations

import uuid

import pytest

ARN = "arn:aws:iot:us-east-1:123456789012:"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def code_of(excinfo) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    r = excinfo.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def test_thing_lifecycle_versions_and_attributes(iot):
    name = unique("thing")
    created = iot.create_thing(thingName=name, attributePayload={"attributes": {"site": "plant-1", "floor": "2"}})
    assert created["thingArn"] == ARN + f"thing/{name}" and created["thingName"] == name
    again = iot.create_thing(thingName=name, attributePayload={"attributes": {"site": "plant-1", "floor": "2"}})
    assert again["thingId"] == created["thingId"]  # identical repeat is idempotent
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException) as exc:
        iot.create_thing(thingName=name, attributePayload={"attributes": {"site": "elsewhere"}})
    assert code_of(exc) == ("ResourceAlreadyExistsException", 409)

    described = iot.describe_thing(thingName=name)
    assert described["version"] == 1 and described["defaultClientId"] == name
    assert described["attributes"] == {"site": "plant-1", "floor": "2"}

    iot.update_thing(thingName=name, attributePayload={"attributes": {"floor": "", "rack": "7"}, "merge": True},
                     expectedVersion=1)
    described = iot.describe_thing(thingName=name)
    assert described["attributes"] == {"site": "plant-1", "rack": "7"} and described["version"] == 2
    iot.update_thing(thingName=name, attributePayload={"attributes": {"only": "this"}})
    assert iot.describe_thing(thingName=name)["attributes"] == {"only": "this"}
    with pytest.raises(iot.exceptions.VersionConflictException) as exc:
        iot.update_thing(thingName=name, attributePayload={"attributes": {}}, expectedVersion=1)
    assert code_of(exc) == ("VersionConflictException", 409)
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.delete_thing(thingName=name, expectedVersion=1)
    iot.delete_thing(thingName=name)
    with pytest.raises(iot.exceptions.ResourceNotFoundException) as exc:
        iot.describe_thing(thingName=name)
    assert code_of(exc) == ("ResourceNotFoundException", 404)
    iot.delete_thing(thingName=name)  # deleting what does not exist succeeds


def test_thing_validation_and_unsupported_references(iot):
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing(thingName="bad name with spaces")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing(thingName="x" * 129)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_thing(thingName=unique("t"), thingTypeName="Camera")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.create_thing(thingName=unique("t"), billingGroupName="Billing")


def test_list_things_filters_and_paginates(fresh_service):
    iot = fresh_service.client()
    for i in range(30):
        iot.create_thing(thingName=f"t{i:02d}", attributePayload={"attributes": {"zone": f"z{i % 3}",
                                                                                  "model": f"m-{i}"}})
    names = [t["thingName"] for page in iot.get_paginator("list_things").paginate(PaginationConfig={"PageSize": 7})
             for t in page["things"]]
    assert names == [f"t{i:02d}" for i in range(30)]
    zone1 = [t["thingName"] for t in iot.list_things(attributeName="zone", attributeValue="z1",
                                                     maxResults=100)["things"]]
    assert zone1 == [f"t{i:02d}" for i in range(30) if i % 3 == 1]
    prefixed = iot.list_things(attributeName="model", attributeValue="m-2", usePrefixAttributeValue=True,
                               maxResults=100)["things"]
    assert [t["thingName"] for t in prefixed] == ["t02", "t20", "t21", "t22", "t23", "t24", "t25", "t26", "t27",
                                                   "t28", "t29"]
    # Filtered by the database now: names with dots, a LIKE wildcard in a prefix, presence alone,
    # a value alone (any attribute's), and pages through the matches.
    iot.create_thing(thingName="dotted", attributePayload={"attributes": {"site.name": "a_b", "zone": "z1"}})
    iot.create_thing(thingName="plain", attributePayload={"attributes": {"site.name": "axb"}})
    assert [t["thingName"] for t in iot.list_things(attributeName="site.name", attributeValue="a_",
                                                    usePrefixAttributeValue=True)["things"]] == ["dotted"]
    assert [t["thingName"] for t in iot.list_things(attributeName="site.name")["things"]] == ["dotted", "plain"]
    assert [t["thingName"] for t in iot.list_things(attributeValue="axb")["things"]] == ["plain"]
    paged = [t["thingName"] for page in iot.get_paginator("list_things").paginate(
        attributeName="zone", attributeValue="z1", PaginationConfig={"PageSize": 4}) for t in page["things"]]
    assert paged == ["dotted"] + [f"t{i:02d}" for i in range(30) if i % 3 == 1]
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_things(maxResults=251)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.list_things(nextToken="!!garbage!!")


def test_group_hierarchy_and_membership(iot):
    root, mid, leaf, other = unique("root"), unique("mid"), unique("leaf"), unique("other")
    created = iot.create_thing_group(thingGroupName=root, thingGroupProperties={
        "thingGroupDescription": "site", "attributePayload": {"attributes": {"city": "Lyon"}}})
    assert created["thingGroupArn"] == ARN + f"thinggroup/{root}"
    assert iot.create_thing_group(thingGroupName=root, thingGroupProperties={
        "thingGroupDescription": "site", "attributePayload": {"attributes": {"city": "Lyon"}}})["thingGroupId"] == \
        created["thingGroupId"]
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_thing_group(thingGroupName=root, thingGroupProperties={"thingGroupDescription": "changed"})
    iot.create_thing_group(thingGroupName=mid, parentGroupName=root)
    iot.create_thing_group(thingGroupName=leaf, parentGroupName=mid)
    iot.create_thing_group(thingGroupName=other)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.create_thing_group(thingGroupName=unique("orphan"), parentGroupName=unique("missing"))

    described = iot.describe_thing_group(thingGroupName=leaf)
    assert described["thingGroupMetadata"]["parentGroupName"] == mid
    assert [g["groupName"] for g in described["thingGroupMetadata"]["rootToParentThingGroups"]] == [root, mid]
    assert described["version"] == 1 and "creationDate" in described["thingGroupMetadata"]
    assert iot.update_thing_group(thingGroupName=leaf, thingGroupProperties={"thingGroupDescription": "line 3"},
                                  expectedVersion=1)["version"] == 2
    with pytest.raises(iot.exceptions.VersionConflictException):
        iot.update_thing_group(thingGroupName=leaf, thingGroupProperties={"thingGroupDescription": "x"},
                               expectedVersion=1)

    children = [g["groupName"] for g in iot.list_thing_groups(parentGroup=root)["thingGroups"]]
    assert children == [mid]
    below = sorted(g["groupName"] for g in iot.list_thing_groups(parentGroup=root, recursive=True)["thingGroups"])
    assert below == sorted([mid, leaf])
    assert [g["groupName"] for g in iot.list_thing_groups(namePrefixFilter=root[:9], maxResults=250)["thingGroups"]
            if g["groupName"] == root] == [root]

    thing = unique("cam")
    iot.create_thing(thingName=thing)
    iot.add_thing_to_thing_group(thingGroupName=leaf, thingName=thing)
    iot.add_thing_to_thing_group(thingGroupArn=ARN + f"thinggroup/{other}", thingArn=ARN + f"thing/{thing}")
    with pytest.raises(iot.exceptions.InvalidRequestException):  # one group per hierarchy
        iot.add_thing_to_thing_group(thingGroupName=mid, thingName=thing)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.add_thing_to_thing_group(thingGroupName=leaf, thingName=unique("ghost"))
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.add_thing_to_thing_group(thingGroupName=unique("ghost"), thingName=thing)

    assert sorted(g["groupName"] for g in iot.list_thing_groups_for_thing(thingName=thing)["thingGroups"]) == \
        sorted([leaf, other])
    assert iot.list_things_in_thing_group(thingGroupName=root)["things"] == []
    assert iot.list_things_in_thing_group(thingGroupName=root, recursive=True)["things"] == [thing]
    iot.remove_thing_from_thing_group(thingGroupName=leaf, thingName=thing)
    assert iot.list_things_in_thing_group(thingGroupName=root, recursive=True)["things"] == []

    with pytest.raises(iot.exceptions.InvalidRequestException) as refused:
        iot.delete_thing_group(thingGroupName=mid)  # it has a child
    assert refused.value.response["Error"]["Message"] == \
        f"Cannot delete thing group : {mid} when there are still child groups attached to it."
    iot.delete_thing_group(thingGroupName=leaf)
    iot.delete_thing_group(thingGroupName=leaf)  # already gone: succeeds


def test_ten_groups_per_thing(iot):
    thing = unique("busy")
    iot.create_thing(thingName=thing)
    for i in range(10):
        group = unique(f"g{i}")
        iot.create_thing_group(thingGroupName=group)
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)
    extra = unique("g10")
    iot.create_thing_group(thingGroupName=extra)
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.add_thing_to_thing_group(thingGroupName=extra, thingName=thing)


def test_update_thing_groups_for_thing_moves_a_thing_in_one_call(iot):
    """UpdateThingGroupsForThing (501 before; scripts move devices with it): removals then
    additions, so a move within a hierarchy is one call; a refused call changes nothing."""
    root, line_1, line_2, other = unique("plant"), unique("line1"), unique("line2"), unique("other")
    iot.create_thing_group(thingGroupName=root)
    for group in (line_1, line_2):
        iot.create_thing_group(thingGroupName=group, parentGroupName=root)
    iot.create_thing_group(thingGroupName=other)
    thing = unique("cam")
    iot.create_thing(thingName=thing)

    def groups() -> list[str]:
        return sorted(g["groupName"] for g in iot.list_thing_groups_for_thing(thingName=thing)["thingGroups"])

    assert iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToAdd=[line_1, other])["ResponseMetadata"][
        "HTTPStatusCode"] == 200
    assert groups() == sorted([line_1, other])
    with pytest.raises(iot.exceptions.InvalidRequestException):  # one group per hierarchy: line_1 stays
        iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToAdd=[line_2])
    iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToRemove=[line_1], thingGroupsToAdd=[line_2],
                                      overrideDynamicGroups=True)
    assert groups() == sorted([line_2, other])
    with pytest.raises(iot.exceptions.ResourceNotFoundException) as missing:
        iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToRemove=[other],
                                          thingGroupsToAdd=[unique("ghost")])
    assert code_of(missing) == ("ResourceNotFoundException", 404)
    assert groups() == sorted([line_2, other])  # the removal of the refused call did not happen
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.update_thing_groups_for_thing(thingName=unique("ghost"), thingGroupsToAdd=[other])
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.update_thing_groups_for_thing(thingGroupsToAdd=[other])  # no thing named
    many = [unique(f"g{i}") for i in range(9)]
    for group in many:
        iot.create_thing_group(thingGroupName=group)
    with pytest.raises(iot.exceptions.InvalidRequestException):  # 2 + 9 > 10 groups
        iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToAdd=many)
    assert groups() == sorted([line_2, other])
    iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToRemove=[line_2, other])
    iot.update_thing_groups_for_thing(thingName=thing, thingGroupsToRemove=[line_2])  # not a member: nothing to do
    assert groups() == []
