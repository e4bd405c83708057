"""Detect mitigation tasks run in the background (controlplane/mitigation_execution.py), on SQLite
and PostgreSQL with the real operations: a cancel seen between batches, a task left by a node that
died taken over when its lease runs out (no execution applied twice or lost), two nodes never
running one task, the limit of five tasks in progress, and tasks deleted 90 days after they end."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from iotdefender.contract.errors import ApiError
from iotdefender.controlplane import registry
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.dispatch import Dispatcher
from iotdefender.controlplane.mitigation_execution import MitigationRunner
from iotdefender.service import retention_round
from iotdefender.store.schema import detect_mitigation_executions, thing_group_members, violation_events

BEHAVIOR = {"name": "ports", "metric": "aws:num-listening-tcp-ports",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 3}}}
ROLE = "arn:aws:iam::123456789012:role/mitigation"


class Clock:
    """Moves a millisecond each time it is read, as time does between two steps."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


@pytest.fixture
def setup(engine):
    """Things t0..t4, each with a violation v0..v4 of profile p, and an action into group q."""
    clock = Clock()
    ctx = ServiceContext(engine=engine, clock=clock)
    dispatcher = Dispatcher(ctx, registry.IMPLEMENTED, lambda: None)
    call = dispatcher.call_by_name
    call("CreateSecurityProfile", {"securityProfileName": "p", "behaviors": [BEHAVIOR]})
    call("CreateThingGroup", {"thingGroupName": "q"})
    for n in range(5):
        call("CreateThing", {"thingName": f"t{n}"})
    with engine.begin() as conn:
        conn.execute(violation_events.insert(), [
            {"violation_id": f"v{n}", "event_type": "in-alarm", "thing_name": f"t{n}", "profile_name": "p",
             "behavior": BEHAVIOR, "behavior_name": "ports", "criteria_type": "STATIC", "suppressed": False,
             "metric_value": {"count": 5}, "event_time": clock.now - 100 + n, "evidence": {}} for n in range(5)])
    call("CreateMitigationAction", {"actionName": "a", "roleArn": ROLE, "actionParams": {
        "addThingsToThingGroupParams": {"thingGroupNames": ["q"]}}})
    return ctx, call, clock


def start(call, task_id: str, **request) -> None:  # type: ignore[no-untyped-def]
    call("StartDetectMitigationActionsTask", {"taskId": task_id, "clientRequestToken": f"{task_id}-token",
                                              "target": {"securityProfileName": "p"}, "actions": ["a"], **request})


def statuses(engine, task_id: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(detect_mitigation_executions.c.violation_id, detect_mitigation_executions.c.status)
                            .where(detect_mitigation_executions.c.task_id == task_id)).all()
    return dict(rows)


def quarantined(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(thing_group_members.c.thing_name)
                                   .where(thing_group_members.c.group_name == "q")).scalars())


def test_a_cancel_between_batches_skips_what_is_left(setup, engine):
    ctx, call, _ = setup
    changes: list[int] = []
    runner = MitigationRunner(ctx, "node-a", on_change=lambda: changes.append(1), batch=2, sleep=lambda s: None)
    start(call, "task")
    assert runner.step()  # its violations chosen
    assert runner.step()  # v0, v1
    call("CancelDetectMitigationActionsTask", {"taskId": "task"})
    assert not runner.step()
    assert statuses(engine, "task") == {"v0": "SUCCESSFUL", "v1": "SUCCESSFUL", "v2": "SKIPPED", "v3": "SKIPPED",
                                        "v4": "SKIPPED"}
    assert quarantined(engine) == ["t0", "t1"] and changes == [1]
    summary = call("DescribeDetectMitigationActionsTask", {"taskId": "task"})["taskSummary"]
    assert summary["taskStatus"] == "CANCELED"
    assert summary["taskStatistics"] == {"actionsExecuted": 2, "actionsSkipped": 3, "actionsFailed": 0}
    with pytest.raises(ApiError, match="in progress"):
        call("CancelDetectMitigationActionsTask", {"taskId": "task"})


def test_a_task_left_by_a_dead_node_is_finished_by_another_once_its_lease_ends(setup, engine):
    ctx, call, clock = setup
    start(call, "task")
    dead = MitigationRunner(ctx, "node-dead", on_change=lambda: None, batch=2, lease_s=30.0, sleep=lambda s: None)
    assert dead.step() and dead.step()  # chosen, then v0 and v1 applied
    # The node dies here. Another finds the task held until the lease ends, then finishes it.
    other = MitigationRunner(ctx, "node-b", on_change=lambda: None, batch=2, lease_s=30.0, sleep=lambda s: None)
    assert not other.step()
    clock.now += 31
    while other.step():
        pass
    assert statuses(engine, "task") == dict.fromkeys(["v0", "v1", "v2", "v3", "v4"], "SUCCESSFUL")
    assert quarantined(engine) == ["t0", "t1", "t2", "t3", "t4"]
    assert call("DescribeDetectMitigationActionsTask", {"taskId": "task"})["taskSummary"]["taskStatus"] == "SUCCESSFUL"
    # The dead node, back, finds nothing to run: nothing is applied twice.
    assert not dead.step()


def test_a_nodes_tasks_take_turns(setup, engine):
    """Two tasks of one node advance a batch each in turn (AWS runs up to five at once); before,
    a task waited for the one before it to end."""
    ctx, call, _ = setup
    start(call, "first")
    start(call, "second")
    runner = MitigationRunner(ctx, "node", on_change=lambda: None, batch=2, sleep=lambda s: None)
    for _ in range(4):  # each chosen, then a batch of each
        assert runner.step()
    assert sorted(statuses(engine, "first").values()).count("SUCCESSFUL") == 2
    assert sorted(statuses(engine, "second").values()).count("SUCCESSFUL") == 2


def test_two_nodes_at_once_run_each_task_once(setup, engine):
    ctx, call, _ = setup
    for n in range(3):
        start(call, f"task{n}", target={"violationIds": [f"v{n}"]})
    runners = [MitigationRunner(ctx, f"node-{n}", on_change=lambda: None, batch=1, sleep=lambda s: None)
               for n in range(2)]
    barrier = threading.Barrier(2)

    def drain(runner: MitigationRunner) -> None:
        barrier.wait()
        while runner.step():
            pass

    threads = [threading.Thread(target=drain, args=(runner,)) for runner in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for n in range(3):
        assert statuses(engine, f"task{n}") == {f"v{n}": "SUCCESSFUL"}
        summary = call("DescribeDetectMitigationActionsTask", {"taskId": f"task{n}"})["taskSummary"]
        assert summary["taskStatistics"]["actionsExecuted"] == 1 and summary["taskStatus"] == "SUCCESSFUL"


def test_five_tasks_in_progress_at_most_and_tasks_go_90_days_after_they_end(setup, engine):
    ctx, call, clock = setup
    for n in range(5):
        start(call, f"task{n}")
    with pytest.raises(ApiError) as refused:
        start(call, "task5")
    assert refused.value.code == "LimitExceededException"
    runner = MitigationRunner(ctx, "node", on_change=lambda: None, sole=True, sleep=lambda s: None)
    while runner.step():
        pass
    start(call, "task5")  # the others ended
    assert retention_round(engine, clock.now + 89 * 86400, 1e9, 1e9).mitigation_tasks == 0
    assert retention_round(engine, clock.now + 91 * 86400, 1e9, 1e9).mitigation_tasks == 5
    with pytest.raises(ApiError) as gone:
        call("DescribeDetectMitigationActionsTask", {"taskId": "task0"})
    assert gone.value.code == "ResourceNotFoundException"
    assert statuses(engine, "task0") == {}
    assert call("DescribeDetectMitigationActionsTask", {"taskId": "task5"})["taskSummary"]["taskStatus"] == "IN_PROGRESS"


def test_a_violation_whose_events_differ_in_suppression_is_planned_once(setup, engine):
    """A behavior's suppressAlerts changed while it was in alarm: its events carry both values. It
    counts as suppressed (left out unless asked), and, asked, is acted on once (listed once per
    value, it was planned twice: a key violation that failed the task at every try)."""
    ctx, call, clock = setup
    with engine.begin() as conn:
        conn.execute(violation_events.insert(), [
            {"violation_id": "v9", "event_type": kind, "thing_name": "t0", "profile_name": "p", "behavior": BEHAVIOR,
             "behavior_name": "ports", "criteria_type": "STATIC", "suppressed": suppressed,
             "metric_value": {"count": 5}, "event_time": clock.now - 50 + n, "evidence": {}}
            for n, (kind, suppressed) in enumerate([("in-alarm", False), ("alarm-cleared", True)])])
    start(call, "left-out", target={"violationIds": ["v9"]})
    start(call, "asked", target={"violationIds": ["v9"]}, includeSuppressedAlerts=True)
    runner = MitigationRunner(ctx, "node", on_change=lambda: None, sole=True, sleep=lambda s: None)
    while runner.step():
        pass
    assert statuses(engine, "left-out") == {} and statuses(engine, "asked") == {"v9": "SUCCESSFUL"}
    assert call("DescribeDetectMitigationActionsTask", {"taskId": "asked"})["taskSummary"]["taskStatus"] == "SUCCESSFUL"


def test_a_task_that_keeps_failing_for_a_reason_of_its_own_ends_failed(setup, engine):
    """A defect (here: a task row whose action lost its parameters) is retried, then the task ends
    FAILED with what is left SKIPPED and the error said; before, it stayed IN_PROGRESS for ever."""
    from iotdefender.controlplane.mitigation_execution import GIVE_UP_AFTER
    from iotdefender.store.schema import detect_mitigation_tasks

    ctx, call, _ = setup
    start(call, "broken", target={"violationIds": ["v0"]})
    with engine.begin() as conn:
        conn.execute(detect_mitigation_tasks.update().values(
            actions=[{"name": "a", "id": "x", "roleArn": ROLE, "actionParams": {}}]))
    runner = MitigationRunner(ctx, "node", on_change=lambda: None, sole=True, sleep=lambda s: None)
    assert runner.step()  # its violations chosen (which reads no action)
    for _ in range(GIVE_UP_AFTER):
        with pytest.raises(KeyError):
            runner.step()
    assert not runner.step()  # nothing left to run
    summary = call("DescribeDetectMitigationActionsTask", {"taskId": "broken"})["taskSummary"]
    assert summary["taskStatus"] == "FAILED" and summary["taskStatistics"]["actionsSkipped"] == 1
    (execution,) = call("ListDetectMitigationActionsExecutions", {"taskId": "broken"})["actionsExecutions"]
    assert execution["status"] == "SKIPPED" and "could not run" in execution["message"]


def test_a_large_plan_is_written_a_part_at_a_time_and_finished_by_the_node_that_takes_over(setup, engine,
                                                                                            monkeypatch):
    """The executions are written ``PLAN_ROWS`` at a time, each part its own step (one transaction
    for all held the database's writing for seconds); a node that takes over mid-plan writes only
    what is missing: each violation's execution once."""
    from iotdefender.controlplane import mitigation_execution

    monkeypatch.setattr(mitigation_execution, "PLAN_ROWS", 2)
    ctx, call, clock = setup
    start(call, "task")
    dead = MitigationRunner(ctx, "node-dead", on_change=lambda: None, sleep=lambda s: None)
    assert dead.step()
    assert sorted(statuses(engine, "task")) == ["v0", "v1"]  # the first part only
    other = MitigationRunner(ctx, "node-b", on_change=lambda: None, sleep=lambda s: None)
    clock.now += 31
    while other.step():
        pass
    assert statuses(engine, "task") == dict.fromkeys(["v0", "v1", "v2", "v3", "v4"], "SUCCESSFUL")
    assert quarantined(engine) == ["t0", "t1", "t2", "t3", "t4"]
