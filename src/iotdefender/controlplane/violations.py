"""ListActiveViolations, ListViolationEvents, PutVerificationStateOnViolation.

``listSuppressedAlerts`` is documented only as "A list of all suppressed alerts": true lists only
violations of behaviors with suppressAlerts, false only the others, absent lists both.
``verificationState`` is returned only once set (AWS's examples omit it before), and the filter
UNKNOWN matches violations never verified, the documented default.
"""

from __future__ import annotations

from typing import Any

from iotdefender.contract.errors import invalid_request, not_found
from iotdefender.contract.service_model import service_model
from iotdefender.contract.timestamps import stored_range
from iotdefender.contract.validation import validate_value
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.engine.ml_behavior import additional_info
from iotdefender.store import violations
from iotdefender.controlplane.pagination import decode_token, encode_token, page_size, scope_of

operation = OperationTable()


def _filter(params: Params, behavior_name: str | None) -> violations.ViolationFilter:
    """The request's filter members in storage's terms (``behavior_name`` is the console's)."""
    suppressed = params.get("listSuppressedAlerts")
    return violations.ViolationFilter(
        thing_name=params.get("thingName"), profile_name=params.get("securityProfileName"),
        behavior_name=behavior_name, criteria_type=params.get("behaviorCriteriaType"),
        suppressed=None if suppressed is None else bool(suppressed),
        verification_state=params.get("verificationState"))


def _verification(row: Any) -> Params:
    """The verification members, and ML Detect's confidence level (from the stored behavior, the
    one the violation was evaluated with)."""
    out: Params = {}
    info = additional_info(row.behavior)
    if info is not None:
        out["violationEventAdditionalInfo"] = info
    if row.verification_state_value is not None:
        out["verificationState"] = row.verification_state_value
        if row.verification_description_value:
            out["verificationStateDescription"] = row.verification_description_value
    return out


@operation("ListActiveViolations")
def list_active_violations(ctx: ServiceContext, params: Params, behavior_name: str | None = None,
                           newest_first: bool = False) -> Params:
    """Oldest start first (AWS does not document an order); the console asks for ``newest_first``
    and may filter by ``behavior_name`` (AWS's model has no such filter)."""
    filters = _filter(params, behavior_name)
    scope = scope_of(params, behavior=behavior_name, newest_first=newest_first)
    after = decode_token(params.get("nextToken"), scope, (float, str))
    limit = page_size(params.get("maxResults"))
    with ctx.engine.connect() as conn:
        rows = violations.active_page(conn, filters, tuple(after) if after else None, limit + 1,
                                      descending=newest_first)
    last = rows[limit - 1] if len(rows) > limit else None
    token = encode_token([last.violation_start_time, last.violation_id], scope) if last is not None else None
    return {
        "activeViolations": [
            {"violationId": r.violation_id, "thingName": r.thing_name, "securityProfileName": r.profile_name,
             "behavior": r.behavior, "lastViolationValue": r.last_violation_value,
             "lastViolationTime": r.last_violation_time, "violationStartTime": r.violation_start_time,
             **_verification(r)}
            for r in rows[:limit]
        ],
        "nextToken": token,
    }


@operation("ListViolationEvents")
def list_violation_events(ctx: ServiceContext, params: Params, behavior_name: str | None = None,
                          newest_first: bool = False) -> Params:
    """AWS lists oldest first; the console asks for ``newest_first`` (and may filter by behavior)."""
    if params["endTime"] < params["startTime"]:
        raise invalid_request("endTime must not be earlier than startTime")
    start, end = stored_range(params["startTime"], params["endTime"])
    filters = _filter(params, behavior_name)
    scope = scope_of(params, behavior=behavior_name, newest_first=newest_first)
    after = decode_token(params.get("nextToken"), scope, (float, int))
    limit = page_size(params.get("maxResults"))
    with ctx.engine.connect() as conn:
        rows = violations.events_page(conn, filters, start, end, tuple(after) if after else None, limit + 1,
                                      descending=newest_first)
    token = encode_token([rows[limit - 1].event_time, rows[limit - 1].id], scope) if len(rows) > limit else None
    return {
        "violationEvents": [
            {"violationId": r.violation_id, "thingName": r.thing_name, "securityProfileName": r.profile_name,
             "behavior": r.behavior, "metricValue": r.metric_value, "violationEventType": r.event_type,
             "violationEventTime": r.event_time, **_verification(r)}
            for r in rows[:limit]
        ],
        "nextToken": token,
    }


@operation("PutVerificationStateOnViolation", changes_monitoring=False)
def put_verification_state_on_violation(ctx: ServiceContext, params: Params) -> Params:
    violation_id = params["violationId"]
    with ctx.writing() as conn:
        if not violations.violation_exists(conn, violation_id):
            # The model lists no ResourceNotFoundException here; an unknown id is a bad request.
            raise invalid_request(f"Violation {violation_id} does not exist")
        violations.set_verification(conn, violation_id, params["verificationState"],
                                    params.get("verificationStateDescription"))
    return {}


def violation_evidence(ctx: ServiceContext, violation_id: str) -> Params:
    """Extension: every event of a violation with the datapoints and threshold that caused it."""
    validate_value(service_model().shape_for("ViolationId"), violation_id, "violationId")
    with ctx.engine.connect() as conn:
        rows = violations.events_of(conn, violation_id)
    if not rows:
        raise not_found(f"Violation {violation_id} does not exist")
    return {
        "violationId": violation_id,
        "thingName": rows[0].thing_name,
        "securityProfileName": rows[0].profile_name,
        "behavior": rows[0].behavior,
        "events": noting_model_changes([{"violationEventType": r.event_type, "violationEventTime": r.event_time,
                                         "metricValue": r.metric_value, "evidence": r.evidence} for r in rows]),
    }


def noting_model_changes(events: list[Params]) -> list[Params]:
    """An ML violation's events (in time order) with each ``alarm-cleared`` that was judged by
    another model version than its ``in-alarm`` saying so (``alarmModelVersion`` and a clause in
    the sentence): the alarm cleared under a rebuilt model, which is a different reason than the
    device going back to its old normal, and the reader should not have to compare versions."""
    raised: Any = None
    for event in events:
        evidence = event.get("evidence")
        if not isinstance(evidence, dict) or "modelVersion" not in evidence:
            continue
        if event["violationEventType"] == "in-alarm":
            raised = evidence["modelVersion"]
        elif event["violationEventType"] == "alarm-cleared" and raised is not None \
                and evidence["modelVersion"] != raised:
            event["evidence"] = {**evidence, "alarmModelVersion": raised,
                                 "explanation": f"{evidence.get('explanation', '')}; the alarm was raised under "
                                                f"model version {raised}: the behavior's model was rebuilt since"}
    return events
