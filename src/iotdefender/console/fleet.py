"""Fleet distributions for the metrics page: the latest value of each device, and its percentiles.

Pure numpy over the columnar history (store/history.py): a 100k-device fleet is a few arrays of
100k numbers, sorted once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from iotdefender.store.history import SeriesPoints

PERCENTILES = (0, 10, 25, 50, 75, 90, 99, 100)


def latest_per_thing(points: SeriesPoints, only: set[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Each device's most recent value (the last one at its latest time)."""
    if len(points) == 0:
        return [], np.empty(0)
    order = np.lexsort((points.times, points.thing_index))
    things = points.thing_index[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = things[1:] != things[:-1]
    chosen = order[last]
    names = [points.things[i] for i in points.thing_index[chosen].tolist()]
    values = points.values[chosen]
    if only is not None:
        keep = np.fromiter((n in only for n in names), dtype=bool, count=len(names))
        names = [n for n, k in zip(names, keep) if k]
        values = values[keep]
    return names, values


def distribution(names: list[str], values: np.ndarray, bins: int = 20, extremes: int = 10) -> dict[str, Any]:
    """Percentiles, a histogram and the devices at both ends (who to look at first)."""
    if len(values) == 0:
        return {"devices": 0, "percentiles": [], "histogram": [], "highest": [], "lowest": []}
    counts, edges = np.histogram(values, bins=bins)
    order = np.argsort(values, kind="stable")
    return {
        "devices": int(len(values)),
        "percentiles": [{"p": p, "value": float(v)} for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))],
        "histogram": [{"from": float(edges[i]), "to": float(edges[i + 1]), "devices": int(c)}
                      for i, c in enumerate(counts)],
        "highest": [{"thingName": names[i], "value": float(values[i])} for i in order[::-1][:extremes].tolist()],
        "lowest": [{"thingName": names[i], "value": float(values[i])} for i in order[:extremes].tolist()],
    }


def series_of_things(points: SeriesPoints, wanted: list[str]) -> dict[str, list[list[float]]]:
    """[[time, value], ...] in time order for each wanted device that has datapoints."""
    index = {name: i for i, name in enumerate(points.things)}
    out: dict[str, list[list[float]]] = {}
    for name in wanted:
        i = index.get(name)
        if i is None:
            continue
        mask = points.thing_index == i
        order = np.argsort(points.times[mask], kind="stable")
        out[name] = np.column_stack((points.times[mask][order], points.values[mask][order])).tolist()
    return out
