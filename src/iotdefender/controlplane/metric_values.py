"""ListMetricValues: the retained datapoints of one thing and metric over a time range."""

from __future__ import annotations

from iotdefender.contract.errors import invalid_request
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.store import metric_values
from iotdefender.controlplane.pagination import decode_token, encode_token, page_size

operation = OperationTable()


@operation("ListMetricValues")
def list_metric_values(ctx: ServiceContext, params: Params) -> Params:
    start, end = params["startTime"], params["endTime"]
    if end < start:
        raise invalid_request("endTime must not be earlier than startTime")
    if params.get("dimensionValueOperator") is not None and params.get("dimensionName") is None:
        raise invalid_request("dimensionValueOperator requires dimensionName")
    after = decode_token(params.get("nextToken"), (float, int))
    limit = page_size(params.get("maxResults"))
    key = metric_values.series_key(params["metricName"], params.get("dimensionName"),
                                   params.get("dimensionValueOperator"))
    with ctx.engine.connect() as conn:
        rows = metric_values.series_page(conn, params["thingName"], key, start, end,
                                         tuple(after) if after else None, limit + 1)
    token = None
    if len(rows) > limit:
        row_id, ts, _ = rows[limit - 1]
        token = encode_token([ts, row_id])
    return {
        "metricDatumList": [{"timestamp": ts, "value": value} for _, ts, value in rows[:limit]],
        "nextToken": token,
    }
