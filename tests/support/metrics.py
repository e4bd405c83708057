"""One sample of a running service's Prometheus ``/metrics``."""

from __future__ import annotations

from tests.support import plain_http


def metric_sample(endpoint: str, sample: str) -> float:
    """The value of ``sample`` (its name and labels as printed, e.g. ``x_total{reason="A"}``); 0 when absent."""
    for line in plain_http.get(endpoint + "/metrics", timeout=5).text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0
