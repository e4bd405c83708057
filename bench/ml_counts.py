"""ML Detect on small counts: how far each level's band reaches, how often normal windows pass it,
and how often floods are caught.

Cloud-side metrics are small counts a window (authorization failures, connection attempts,
disconnects, messages), as are listening ports. Each fleet here is one kind of count — Poisson of
several means, over-dispersed (negative binomial), zero-inflated, constant, a constant with
dropouts — drawn for ``--devices`` devices every 5 minutes for ``--days`` days. Per kind and
level: the band's upper edge on the model against the count's own edge (the count beyond which
the level's stated share of windows lie, where the law is known), the share of ``--fresh`` normal
windows judged at the level or higher against the share stated (``TrainingSettings.exceedance``),
and the share of flood windows (a Poisson count of 3, 5 and 10 times the mean) caught at it.

    .venv/bin/python bench/ml_counts.py [--devices 200] [--days 14] [--fresh 2016] [--output PATH]

Writes bench/results/ml-counts-<date>.json with the machine and the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import math

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import environment  # noqa: E402
from iotdefender.engine.ml import LEVELS, TrainingData, TrainingSettings, train  # noqa: E402

RESULTS = Path(__file__).with_name("results")
START, STEP = 1_800_000_000.0, 300.0
FLOODS = (3.0, 5.0, 10.0)
Draw = Callable[[np.random.Generator, int], npt.NDArray[np.float64]]


# The log-probability of each count 0, 1, 2... of a law whose edges are known.
LogPmf = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]
_LOG_FACTORIAL = np.array([math.lgamma(k + 1) for k in range(4000)])


def true_edge(log_pmf: LogPmf, share: float) -> float:
    """The count beyond which at most ``share`` of the law's windows lie (scipy's ``isf``)."""
    beyond = 1.0 - np.cumsum(np.exp(log_pmf(np.arange(len(_LOG_FACTORIAL), dtype=np.float64))))
    return float(np.argmax(beyond <= share))


def poisson(mean: float) -> tuple[Draw, float, LogPmf | None]:
    return (lambda rng, n: rng.poisson(mean, n).astype(np.float64)), mean, \
        (lambda k: k * math.log(mean) - mean - _LOG_FACTORIAL[k.astype(int)])


def negative_binomial(mean: float, size: float) -> tuple[Draw, float, LogPmf | None]:
    p = size / (size + mean)
    return (lambda rng, n: rng.negative_binomial(size, p, n).astype(np.float64)), mean, \
        (lambda k: np.array([math.lgamma(x + size) for x in k]) - math.lgamma(size) - _LOG_FACTORIAL[k.astype(int)]
         + size * math.log(p) + k * math.log(1 - p))


def zero_inflated(mean: float, zeros: float) -> tuple[Draw, float, LogPmf | None]:
    return (lambda rng, n: np.where(rng.random(n) < zeros, 0, rng.poisson(mean, n)).astype(np.float64)), \
        (1 - zeros) * mean, None


def constant(value: float, dropouts: float = 0.0) -> tuple[Draw, float, LogPmf | None]:
    return (lambda rng, n: np.where(rng.random(n) < dropouts, 0.0, value)), value, None


KINDS: dict[str, tuple[Draw, float, LogPmf | None]] = {
    "poisson 0.2": poisson(0.2), "poisson 1": poisson(1.0), "poisson 2": poisson(2.0), "poisson 3": poisson(3.0),
    "poisson 10": poisson(10.0), "poisson 30": poisson(30.0),
    "negative binomial 3 (size 2)": negative_binomial(3.0, 2.0),
    "poisson 3, 30 % zeros": zero_inflated(3.0, 0.3),
    "constant 3": constant(3.0), "3 with 4 % dropouts to 0": constant(3.0, 0.04),
}


def measure(draw: Draw, mean: float, law: LogPmf | None, devices: int, days: float, fresh: int,
            settings: TrainingSettings) -> dict:
    per = int(days * 86_400 / STEP)
    rng = np.random.default_rng(1)
    data = TrainingData(np.repeat(np.arange(devices, dtype=np.int32), per), [f"d{i}" for i in range(devices)],
                        np.tile(START + np.arange(per) * STEP, devices), draw(rng, devices * per))
    last = float(data.time.max())
    began = time.process_time()
    model = train(data, trained_at=last, settings=settings)
    trained_s = time.process_time() - began
    at = last + STEP
    shares = dict(settings.exceedance)
    judged = draw(np.random.default_rng(7), devices * fresh)
    levels = [model.judge(f"d{i // fresh}", float(v), at + STEP * (i % fresh)) for i, v in enumerate(judged)]
    flood_rng = np.random.default_rng(11)
    floods = {factor: [model.judge(f"d{d}", float(flood_rng.poisson(factor * max(mean, 1.0))), at + STEP * d)
                       for d in range(devices) for _ in range(10)] for factor in FLOODS}
    rows = {}
    for rank, level in enumerate(LEVELS):
        reached = LEVELS[rank:]
        rows[level.value] = {
            "upper_edge": round(float(np.median([model.band(f"d{d}", at, level)[1] for d in range(devices)])), 2),
            "true_edge": true_edge(law, shares[level]) if law is not None else None,
            "normal_share_reached": sum(found in reached for found in levels) / len(levels),
            "stated_share": shares[level],
            "floods_caught": {f"x{factor:g}": sum(found in reached for found in caught) / len(caught)
                              for factor, caught in floods.items()},
        }
    return {"train_cpu_s": round(trained_s, 2), "levels": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--days", type=float, default=14.0)
    parser.add_argument("--fresh", type=int, default=2016, help="normal windows judged per device (2016: a week)")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    settings = TrainingSettings()
    results = {}
    for name in args.kinds:
        results[name] = measure(*KINDS[name], args.devices, args.days, args.fresh, settings)
        row = results[name]["levels"]
        print(f"{name:30s} " + "  ".join(
            f"{level}: edge {row[level]['upper_edge']} (true {row[level]['true_edge']}), normal "
            f"{row[level]['normal_share_reached']:.1e}, x5 {row[level]['floods_caught']['x5']:.2f}"
            for level in row), flush=True)
    document = {"benchmark": "ml_counts", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "load_average": os.getloadavg(), "environment": environment(),
                "devices": args.devices, "days": args.days, "fresh_per_device": args.fresh,
                "floods": "a Poisson count of 3, 5 and 10 times the mean (at least 1), 10 a device",
                "results": results}
    RESULTS.mkdir(exist_ok=True)
    output = args.output or RESULTS / f"ml-counts-{datetime.date.today().isoformat()}.json"
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written {output}")


if __name__ == "__main__":
    main()
