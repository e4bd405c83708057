"""Custom metrics: Create, Describe, Update (display name only), Delete, List."""

from __future__ import annotations

from typing import Any

from iotdefender.contract.errors import invalid_request
from iotdefender.controlplane import catalog_entries
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.tag_rules import checked_tags

operation = OperationTable()

KIND = "custom_metric"
MAX_CUSTOM_METRICS = 100  # AWS quota "Custom metrics: 100"


def _describe(row: dict[str, Any]) -> Params:
    return {
        "metricName": row["name"],
        "metricArn": row["arn"],
        "metricType": row["metric_type"],
        "displayName": row["display_name"],
        "creationDate": row["creation_date"],
        "lastModifiedDate": row["last_modified_date"],
    }


@operation("CreateCustomMetric")
def create_custom_metric(ctx: ServiceContext, params: Params) -> Params:
    name = params["metricName"]
    if name.startswith("aws:"):
        raise invalid_request(f"Custom metric name {name} can't begin with aws:")
    values = {"metric_type": params["metricType"], "display_name": params.get("displayName")}
    row = catalog_entries.create(ctx, KIND, name, params.get("clientRequestToken"), MAX_CUSTOM_METRICS,
                                 values, checked_tags(params.get("tags")), defining=("metric_type",))
    return {"metricName": row["name"], "metricArn": row["arn"]}


@operation("DescribeCustomMetric")
def describe_custom_metric(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        return _describe(catalog_entries.require(conn, KIND, params["metricName"]))


@operation("UpdateCustomMetric")
def update_custom_metric(ctx: ServiceContext, params: Params) -> Params:
    return _describe(catalog_entries.update(ctx, KIND, params["metricName"],
                                            {"display_name": params["displayName"]}))


@operation("DeleteCustomMetric")
def delete_custom_metric(ctx: ServiceContext, params: Params) -> Params:
    catalog_entries.delete(ctx, KIND, params["metricName"])
    return {}


@operation("ListCustomMetrics")
def list_custom_metrics(ctx: ServiceContext, params: Params) -> Params:
    names, token = catalog_entries.list_names(ctx, KIND, params)
    return {"metricNames": names, "nextToken": token}
