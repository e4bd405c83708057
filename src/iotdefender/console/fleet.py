"""Fleet distributions for the metrics page: the percentiles of each device's latest value.

Pure numpy over the latest values (store/latest_values.py): a 100k-device fleet is an array of
100k numbers, sorted once.
"""

from __future__ import annotations

from typing import Any

import numpy as np


PERCENTILES = (0, 10, 25, 50, 75, 90, 99, 100)


def among(names: list[str], values: np.ndarray, members: set[str]) -> tuple[list[str], np.ndarray]:
    """The devices of ``members`` (a thing group's), and their values."""
    keep = np.fromiter((name in members for name in names), dtype=bool, count=len(names))
    return [name for name, kept in zip(names, keep) if kept], values[keep]


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
