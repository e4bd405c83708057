"""Security profiles: Create, Describe, Update (versioned), Delete, List, ValidateBehaviors."""

from __future__ import annotations

from typing import Any

import structlog

from iotdefender.contract.errors import already_exists, invalid_request, not_found, version_conflict
from iotdefender.contract.service_model import service_model
from iotdefender.contract.validation import behavior_problems
from iotdefender.controlplane import behavior_rules
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.versioning import check_expected_version
from iotdefender.store import catalog, profiles, tags
from iotdefender.controlplane.pagination import decode_token, page_size, scope_of, take_page
from iotdefender.controlplane.tag_rules import checked_tags

log = structlog.get_logger("iotdefender.controlplane")

operation = OperationTable()


# API member -> column, for the members Update replaces whole and the delete* flags clear.
_REPLACEABLE = {
    "securityProfileDescription": "description",
    "behaviors": "behaviors",
    "alertTargets": "alert_targets",
    "additionalMetricsToRetain": "additional_metrics_to_retain",
    "additionalMetricsToRetainV2": "additional_metrics_to_retain_v2",
    "metricsExportConfig": "metrics_export_config",
}
_DELETE_FLAGS = {
    "deleteBehaviors": "behaviors",
    "deleteAlertTargets": "alertTargets",
    "deleteAdditionalMetricsToRetain": "additionalMetricsToRetain",
    "deleteMetricsExportConfig": "metricsExportConfig",
}


def require_profile(conn: Any, name: str) -> dict[str, Any]:
    row = profiles.get(conn, name)
    if row is None:
        raise not_found(f"Security profile {name} does not exist")
    return row


def _check_behaviors(conn: Any, behaviors: list[Any], v1: list[Any], v2: list[Any]) -> None:
    """InvalidRequestException naming each behavior and the rule it breaks (several: "; " between)."""
    problems = behavior_rules.validate_profile_behaviors(
        behaviors, catalog.custom_metric_types(conn), catalog.dimension_names(conn), v1, v2)
    if problems:
        raise invalid_request("; ".join(problems))


# The longest export topic, in bytes of UTF-8: the embedded broker's plugin publishes the service's
# messages from a buffer of 1,024 bytes (brokers/mosquitto/defender_plugin.c, publish_replies), and
# AWS's 512 characters may take more bytes than that.
_EXPORT_TOPIC_MAX_BYTES = 1023
# AWS IoT's Basic Ingest topics, which AWS's "Detect metrics export" page offers for the export; every
# other topic beginning with "$" is reserved: a device's Device Defender replies among them, where an
# export would reach the device as if it were its report's answer (an outside-in test sent one there).
_BASIC_INGEST = "$aws/rules/"


def _check_export_topic(config: Params | None) -> None:
    """InvalidRequestException for an export topic no message can be published to: MQTT forbids
    the wildcards ``+`` and ``#`` and NUL in a topic name (MQTT 3.1.1, 4.7), and the topics
    beginning with ``$`` are the broker's and the service's own, but for Basic Ingest. AWS's pages
    state only its length (1-512), but its exports could not be published there either; here the
    datapoints would be dropped by the broker, silently, or sent to a device as its reply."""
    topic = (config or {}).get("mqttTopic")
    if not isinstance(topic, str):
        return
    if any(c in topic for c in "+#\0"):
        raise invalid_request(f"metricsExportConfig.mqttTopic {topic!r} cannot be published to: "
                              "a topic name holds no wildcard (+, #) and no NUL")
    if topic.startswith("$") and not topic.startswith(_BASIC_INGEST):
        raise invalid_request(f"metricsExportConfig.mqttTopic {topic!r} is a reserved topic: of the topics beginning "
                              f"with $, only AWS IoT's Basic Ingest topics ({_BASIC_INGEST}...) may take an export")
    if len(topic.encode()) > _EXPORT_TOPIC_MAX_BYTES:
        raise invalid_request(f"metricsExportConfig.mqttTopic is {len(topic.encode())} bytes of UTF-8; "
                              f"this service publishes to topics of at most {_EXPORT_TOPIC_MAX_BYTES}")


def describe_row(row: dict[str, Any]) -> Params:
    return {
        "securityProfileName": row["name"],
        "securityProfileArn": row["arn"],
        "securityProfileDescription": row["description"],
        "behaviors": row["behaviors"],
        "alertTargets": row["alert_targets"],
        "additionalMetricsToRetain": row["additional_metrics_to_retain"],
        "additionalMetricsToRetainV2": row["additional_metrics_to_retain_v2"],
        "version": row["version"],
        "creationDate": row["creation_date"],
        "lastModifiedDate": row["last_modified_date"],
        "metricsExportConfig": row["metrics_export_config"],
    }


@operation("CreateSecurityProfile")
def create_security_profile(ctx: ServiceContext, params: Params) -> Params:
    name = params["securityProfileName"]
    tag_list = checked_tags(params.get("tags"))
    with ctx.writing() as conn:
        existing = profiles.get(conn, name)
        if existing is not None:
            raise already_exists(f"Security profile {name} already exists", name, existing["arn"])
        behaviors = params.get("behaviors") or []
        _check_export_topic(params.get("metricsExportConfig"))
        _check_behaviors(conn, behaviors, params.get("additionalMetricsToRetain") or [],
                         params.get("additionalMetricsToRetainV2") or [])
        now = ctx.now()
        row = dict(name=name, arn=ctx.arn(f"securityprofile/{name}"), behaviors=behaviors, version=1,
                   creation_date=now, last_modified_date=now)
        for member, column in _REPLACEABLE.items():
            if member != "behaviors":
                row[column] = params.get(member)
        profiles.insert(conn, **row)
        tags.replace(conn, row["arn"], tag_list)
    _warn_if_export_asked(name, row["metrics_export_config"], behaviors, row["additional_metrics_to_retain_v2"] or [])
    return {"securityProfileName": name, "securityProfileArn": row["arn"]}


def _warn_if_export_asked(name: str, export_config: dict[str, Any] | None, behaviors: list[dict[str, Any]],
                          retained: list[dict[str, Any]]) -> None:
    """Behaviors or retained metrics marked ``exportMetric`` in a profile without a
    ``metricsExportConfig`` export nothing (there is no topic to publish to; AWS's pages do not say
    it refuses them, so they are stored): say so where an operator who asked for it would look."""
    exported = [b.get("name") for b in behaviors if b.get("exportMetric")]
    exported_retained = [m.get("metric") for m in retained if m.get("exportMetric")]
    if (exported or exported_retained) and not export_config:
        log.warning("metrics_export_without_topic", profile=name, behaviors=exported, retained=exported_retained,
                    reason="exportMetric is set but the profile has no metricsExportConfig: nothing is exported")


@operation("DescribeSecurityProfile")
def describe_security_profile(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        return describe_row(require_profile(conn, params["securityProfileName"]))


@operation("UpdateSecurityProfile")
def update_security_profile(ctx: ServiceContext, params: Params) -> Params:
    """Top-level partial update: given members replace the old value whole; flags clear one."""
    name = params["securityProfileName"]
    for flag, member in _DELETE_FLAGS.items():
        if params.get(flag) and params.get(member) is not None:
            raise invalid_request(f"{flag} cannot be true when {member} is given in the same request")
    _check_export_topic(params.get("metricsExportConfig"))
    with ctx.writing() as conn:
        row = require_profile(conn, name)
        check_expected_version(params, row, f"Security profile {name}")
        changes: dict[str, Any] = {}
        for member, column in _REPLACEABLE.items():
            if params.get(member) is not None:
                changes[column] = params[member]
        for flag, member in _DELETE_FLAGS.items():
            if params.get(flag):
                changes[_REPLACEABLE[member]] = [] if member == "behaviors" else None
        merged = {**row, **changes}
        _check_behaviors(conn, merged["behaviors"] or [], merged["additional_metrics_to_retain"] or [],
                         merged["additional_metrics_to_retain_v2"] or [])
        changes["last_modified_date"] = max(ctx.now(), row["last_modified_date"])
        if not profiles.update(conn, name, row["version"], **changes):
            raise version_conflict(f"Security profile {name} was modified concurrently; retry the update")
        merged.update(changes, version=row["version"] + 1)
    _warn_if_export_asked(name, merged["metrics_export_config"], merged["behaviors"] or [],
                          merged["additional_metrics_to_retain_v2"] or [])
    return describe_row(merged)


@operation("DeleteSecurityProfile")
def delete_security_profile(ctx: ServiceContext, params: Params) -> Params:
    name = params["securityProfileName"]
    with ctx.writing() as conn:
        row = profiles.get(conn, name)
        if row is None:
            return {}  # DeleteSecurityProfile has no ResourceNotFoundException in the model
        check_expected_version(params, row, f"Security profile {name}")
        profiles.delete(conn, name)
        tags.replace(conn, row["arn"], [])
    return {}


@operation("ListSecurityProfiles")
def list_security_profiles(ctx: ServiceContext, params: Params) -> Params:
    dimension = params.get("dimensionName")
    metric = params.get("metricName")
    if dimension is not None and metric is not None:
        raise invalid_request("dimensionName and metricName cannot be used in the same request")
    scope = scope_of(params)
    with ctx.engine.connect() as conn:
        after = decode_token(params.get("nextToken"), scope)
        if dimension is None and metric is None:
            rows = profiles.scan_names_and_arns(conn, after)
        else:
            def uses(row: Any) -> bool:
                v1 = row.additional_metrics_to_retain or []
                v2 = row.additional_metrics_to_retain_v2 or []
                if dimension is not None:
                    return dimension in behavior_rules.dimension_names_used(row.behaviors, v2)
                return metric in behavior_rules.metric_names_used(row.behaviors, v1, v2)

            rows = (r for r in profiles.scan(conn, after) if uses(r))
        page, token = take_page(rows, page_size(params.get("maxResults")), lambda r: r.name, scope)
    return {
        "securityProfileIdentifiers": [{"name": r.name, "arn": r.arn} for r in page],
        "nextToken": token,
    }


@operation("ValidateSecurityProfileBehaviors", checks_constraints=True, changes_monitoring=False)
def validate_security_profile_behaviors(ctx: ServiceContext, params: Params) -> Params:
    behavior_shape = service_model().shape_for("Behavior")
    problems = [problem for behavior in params["behaviors"] for problem in behavior_problems(behavior_shape, behavior)]
    if not problems:
        with ctx.engine.connect() as conn:
            problems = behavior_rules.validate_profile_behaviors(
                params["behaviors"], catalog.custom_metric_types(conn), catalog.dimension_names(conn))
    return {"valid": not problems, "validationErrors": [{"errorMessage": p} for p in problems]}
