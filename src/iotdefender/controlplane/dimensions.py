"""Dimensions (TOPIC_FILTER): Create, Describe, Update (values only), Delete, List."""

from __future__ import annotations

from typing import Any

from iotdefender.contract.topic_filters import filter_problem
from iotdefender.contract.validation_report import problem, validation_error
from iotdefender.controlplane import catalog_entries
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.tag_rules import checked_tags

operation = OperationTable()

KIND = "dimension"
MAX_DIMENSIONS = 10  # AWS quota "Metric dimensions: 10" (not adjustable)


def _describe(row: dict[str, Any]) -> Params:
    return {
        "name": row["name"],
        "arn": row["arn"],
        "type": row["type"],
        "stringValues": row["string_values"],
        "creationDate": row["creation_date"],
        "lastModifiedDate": row["last_modified_date"],
    }


def _check_filters(string_values: list[str]) -> None:
    """TOPIC_FILTER is the only dimension type: every value must be a filter MQTT allows."""
    problems = [problem(value, f"stringValues[{index}]", reason) for index, value in enumerate(string_values)
                if (reason := filter_problem(value)) is not None]
    if problems:
        raise validation_error(problems)


@operation("CreateDimension")
def create_dimension(ctx: ServiceContext, params: Params) -> Params:
    _check_filters(params["stringValues"])
    values = {"type": params["type"], "string_values": params["stringValues"]}
    row = catalog_entries.create(ctx, KIND, params["name"], params.get("clientRequestToken"), MAX_DIMENSIONS,
                                 values, checked_tags(params.get("tags")), defining=("type", "string_values"))
    return {"name": row["name"], "arn": row["arn"]}


@operation("DescribeDimension")
def describe_dimension(ctx: ServiceContext, params: Params) -> Params:
    with ctx.engine.connect() as conn:
        return _describe(catalog_entries.require(conn, KIND, params["name"]))


@operation("UpdateDimension")
def update_dimension(ctx: ServiceContext, params: Params) -> Params:
    _check_filters(params["stringValues"])
    return _describe(catalog_entries.update(ctx, KIND, params["name"], {"string_values": params["stringValues"]}))


@operation("DeleteDimension")
def delete_dimension(ctx: ServiceContext, params: Params) -> Params:
    catalog_entries.delete(ctx, KIND, params["name"])
    return {}


@operation("ListDimensions")
def list_dimensions(ctx: ServiceContext, params: Params) -> Params:
    names, token = catalog_entries.list_names(ctx, KIND, params)
    return {"dimensionNames": names, "nextToken": token}
