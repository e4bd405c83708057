"""AWS's rules hold when clients race, on SQLite and PostgreSQL.

Each control-plane write checks the database, then changes it. On PostgreSQL (READ COMMITTED) two
concurrent ones both passed the check: a thing joined 14 groups at once, a resource got 70 tags,
a profile was created on a custom metric deleted at the same moment, and an update and a delete
with the same ``expectedVersion`` both succeeded (an acknowledged write lost). Every test here
releases its calls together (a barrier), one boto3 client per thread, and checks the invariant.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

ALLOWED_REFUSALS = {"InvalidRequestException", "VersionConflictException", "ResourceNotFoundException"}


def at_once(service, calls: list[Callable[[Any], Any]]) -> list[str]:  # type: ignore[no-untyped-def]
    """Run each call with its own client, released together; "ok" or the error code of each."""
    clients = [service.client() for _ in calls]
    barrier = threading.Barrier(len(calls))
    outcomes = [""] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            calls[index](clients[index])
            outcomes[index] = "ok"
        except ClientError as error:
            outcomes[index] = error.response["Error"]["Code"]

    threads = [threading.Thread(target=run, args=(index,)) for index in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(outcomes) <= {"ok"} | ALLOWED_REFUSALS, outcomes
    return outcomes


def test_a_thing_joins_at_most_ten_groups_and_one_of_a_hierarchy_however_many_ask_at_once(service):
    iot = service.client()
    iot.create_thing(thingName="race-thing")
    for n in range(14):
        iot.create_thing_group(thingGroupName=f"race-group-{n}")
    outcomes = at_once(service, [lambda c, n=n: c.add_thing_to_thing_group(
        thingGroupName=f"race-group-{n}", thingName="race-thing") for n in range(14)])
    joined = iot.list_thing_groups_for_thing(thingName="race-thing")["thingGroups"]
    assert len(joined) == outcomes.count("ok") == 10, outcomes

    iot.create_thing(thingName="race-sibling-thing")
    iot.create_thing_group(thingGroupName="race-root")
    for n in range(5):
        iot.create_thing_group(thingGroupName=f"race-child-{n}", parentGroupName="race-root")
    outcomes = at_once(service, [lambda c, n=n: c.add_thing_to_thing_group(
        thingGroupName=f"race-child-{n}", thingName="race-sibling-thing") for n in range(5)])
    joined = iot.list_thing_groups_for_thing(thingName="race-sibling-thing")["thingGroups"]
    assert len(joined) == outcomes.count("ok") == 1, outcomes


def test_a_resource_keeps_at_most_fifty_tags_however_many_ask_at_once(service):
    iot = service.client()
    for round_ in range(3):
        name = f"race-tags-{round_}"
        arn = iot.create_security_profile(securityProfileName=name)["securityProfileArn"]
        outcomes = at_once(service, [lambda c, t=t: c.tag_resource(
            resourceArn=arn, tags=[{"Key": f"k{t}-{j}", "Value": "v"} for j in range(10)]) for t in range(8)])
        kept = iot.list_tags_for_resource(resourceArn=arn)["tags"]
        assert len(kept) == 10 * outcomes.count("ok") <= 50, (len(kept), outcomes)


def test_a_custom_metric_deleted_while_a_profile_takes_it_up_is_never_both(service):
    iot = service.client()
    for round_ in range(8):
        metric, profile = f"race-metric-{round_}", f"race-user-{round_}"
        iot.create_custom_metric(metricName=metric, metricType="number")
        outcomes = at_once(service, [
            lambda c: c.delete_custom_metric(metricName=metric),
            lambda c: c.create_security_profile(securityProfileName=profile, behaviors=[{
                "name": "b", "metric": metric,
                "criteria": {"comparisonOperator": "less-than", "value": {"number": 1}}}])])
        assert outcomes.count("ok") == 1, (round_, outcomes)


def test_an_update_and_a_delete_with_the_same_expected_version_are_never_both(service):
    iot = service.client()
    for round_ in range(8):
        name = f"race-version-{round_}"
        iot.create_security_profile(securityProfileName=name)
        outcomes = at_once(service, [
            lambda c: c.update_security_profile(securityProfileName=name, securityProfileDescription="new",
                                                expectedVersion=1),
            lambda c: c.delete_security_profile(securityProfileName=name, expectedVersion=1)])
        assert outcomes.count("ok") == 1, (round_, outcomes)


def test_too_many_tags_are_refused_and_nothing_of_them_is_kept(service):
    """110,000 tags were written one by one (22 s of the single writer, other writes waiting)
    before the count refused them: they are refused before the database now."""
    iot = service.client()
    arn = iot.create_security_profile(securityProfileName="race-many-tags")["securityProfileArn"]
    outcomes = at_once(service, [lambda c: c.tag_resource(
        resourceArn=arn, tags=[{"Key": f"k{n}", "Value": "v"} for n in range(20_000)])])
    assert outcomes == ["InvalidRequestException"]
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == []
    # A key given twice counts once, with its last value.
    iot.tag_resource(resourceArn=arn, tags=[{"Key": "k", "Value": str(n)} for n in range(60)])
    assert iot.list_tags_for_resource(resourceArn=arn)["tags"] == [{"Key": "k", "Value": "59"}]
