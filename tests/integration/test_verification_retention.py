"""Verification states go once their violation's events are gone and it is not active: they were
kept forever, readable by nothing. A state of a violation with events left, or of an active
violation whose in-alarm event retention took, stays. SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from iotdefender.service import retention_round
from iotdefender.store.schema import active_violations, violation_events, violation_verification

RETENTION_S = 3600.0
NOW = 100_000.0
BEHAVIOR = {"name": "ports", "metric": "aws:num-listening-tcp-ports",
            "criteria": {"comparisonOperator": "less-than-equals", "value": {"count": 3}}}


def event(violation_id: str, kind: str, at: float) -> dict:
    return {"violation_id": violation_id, "event_type": kind, "thing_name": "t", "profile_name": "p",
            "behavior": BEHAVIOR, "behavior_name": "ports", "criteria_type": "STATIC", "suppressed": False,
            "metric_value": {"count": 5}, "event_time": at, "evidence": {}}


def test_verifications_of_violations_without_events_go(engine) -> None:
    old, recent = NOW - RETENTION_S - 10, NOW - RETENTION_S + 10
    with engine.begin() as conn:
        conn.execute(violation_events.insert(), [
            event("cleared-long-ago", "in-alarm", old - 5), event("cleared-long-ago", "alarm-cleared", old),
            event("cleared-lately", "in-alarm", old), event("cleared-lately", "alarm-cleared", recent),
            event("active-for-long", "in-alarm", old)])
        conn.execute(active_violations.insert().values(
            violation_id="active-for-long", thing_name="t", profile_name="p", behavior_name="ports",
            behavior=BEHAVIOR, criteria_type="STATIC", suppressed=False, last_violation_value={"count": 5},
            last_violation_time=recent, violation_start_time=old))
        conn.execute(violation_verification.insert(), [
            {"violation_id": name, "state": "FALSE_POSITIVE", "description": None}
            for name in ("cleared-long-ago", "cleared-lately", "active-for-long")])
    deleted = retention_round(engine, NOW, RETENTION_S, RETENTION_S)
    assert deleted is not None and (deleted.violation_events, deleted.verifications) == (4, 1)
    with engine.connect() as conn:
        left = sorted(conn.execute(sa.select(violation_verification.c.violation_id)).scalars())
    assert left == ["active-for-long", "cleared-lately"]
    assert retention_round(engine, NOW, RETENTION_S, RETENTION_S) == (0, 0, 0, 0, 0, 0)
