"""ListMetricValues: the retained datapoints of one thing and metric over a time range.

A message size (``aws:message-byte-size``) is stored per cloud-side window as the window's largest
and smallest message, two series (metrics_catalog.smallest_series). Both are sizes of messages the
device sent, so the list gives both, smallest first, at the window's end time (one datum when they
are the same message size): each value a behavior judged — an "at least" behavior the smallest, an
"at most" one the largest — is a datum of the list. Rows stored before the smallest was kept give
their one value (the largest, or 0 for a window without messages).
"""

from __future__ import annotations

from typing import Any

from iotdefender.contract.errors import invalid_request
from iotdefender.contract.timestamps import stored_range
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.operations import OperationTable, Params
from iotdefender.controlplane.pagination import decode_token, encode_token, page_size, scope_of
from iotdefender.metrics_catalog import SIZE_METRICS, is_metric_name, smallest_series
from iotdefender.store import metric_values

operation = OperationTable()


@operation("ListMetricValues")
def list_metric_values(ctx: ServiceContext, params: Params) -> Params:
    if params["endTime"] < params["startTime"]:
        raise invalid_request("endTime must not be earlier than startTime")
    start, end = stored_range(params["startTime"], params["endTime"])
    if params.get("dimensionValueOperator") is not None and params.get("dimensionName") is None:
        raise invalid_request("dimensionValueOperator requires dimensionName")
    limit = page_size(params.get("maxResults"))
    if not is_metric_name(params["metricName"]):
        # metricName has no pattern in the model (BehaviorMetric), so any string reaches here: one
        # that no metric can have (a series of one, "m|smallest", or iotdefender/away) lists
        # nothing, as any name that is no metric's, rather than the service's own series.
        return {"metricDatumList": []}
    key = metric_values.series_key(params["metricName"], params.get("dimensionName"),
                                   params.get("dimensionValueOperator"))
    if params["metricName"] in SIZE_METRICS:
        return _sizes(ctx, params, key, start, end, limit)
    scope = scope_of(params)
    after = decode_token(params.get("nextToken"), scope, (float, int))
    with ctx.engine.connect() as conn:
        rows = metric_values.series_page(conn, params["thingName"], key, start, end,
                                         tuple(after) if after else None, limit + 1)
    token = None
    if len(rows) > limit:
        row_id, ts, _ = rows[limit - 1]
        token = encode_token([ts, row_id], scope)
    return {
        "metricDatumList": [{"timestamp": ts, "value": value} for _, ts, value in rows[:limit]],
        "nextToken": token,
    }


def _sizes(ctx: ServiceContext, params: Params, key: str, start: float, end: float, limit: int) -> Params:
    """A message size's datums: each window's smallest then largest message. A page may end
    between the two, so the token is the (ts, id) of the row and the position in it of the last
    datum given."""
    scope = scope_of(params)
    after = decode_token(params.get("nextToken"), scope, (float, int, int))
    if after is not None and (after[1] < 1 or after[2] not in (0, 1)):
        raise invalid_request("The nextToken is invalid")
    smallest = smallest_series(key)
    # The row of the token is read again (ids are integers: after id - 1 is from id on), and its
    # datums up to the token's position skipped.
    resume = (after[0], after[1] - 1) if after else None
    with ctx.engine.connect() as conn:
        rows = metric_values.series_rows(conn, params["thingName"], (smallest, key), start, end, resume,
                                         limit + 2)
    datums: list[tuple[float, int, int, Any]] = []
    for row_id, ts, values in rows:
        found = [values[k] for k in (smallest, key) if k in values]
        if len(found) == 2 and found[0] == found[1]:
            found = found[:1]
        for position, value in enumerate(found):
            if after is None or (ts, row_id, position) > (after[0], after[1], after[2]):
                datums.append((ts, row_id, position, value))
    token = encode_token(list(datums[limit - 1][:3]), scope) if len(datums) > limit else None
    return {
        "metricDatumList": [{"timestamp": ts, "value": value} for ts, _, _, value in datums[:limit]],
        "nextToken": token,
    }
