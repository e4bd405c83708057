"""Training leaves out the datapoints of windows a device spent away (store/history.py
``without_windows_away``): exactly the (device, time) pairs marked, whatever the order of the
datapoints, the devices' order in either list and the times that are no marked window's end."""

from __future__ import annotations

import numpy as np

from iotdefender.store.history import SeriesPoints, without_windows_away


def test_exactly_the_marked_pairs_are_left_out() -> None:
    rng = np.random.default_rng(5)
    things = [f"dev-{i}" for i in range(300)]
    device = rng.integers(0, len(things), 50_000).astype(np.int32)
    times = 1_800_000_000.0 + 300.0 * rng.integers(0, 400, len(device)) + np.where(rng.random(len(device)) < 0.1,
                                                                                   0.5, 0.0)
    points = SeriesPoints(things, device, times, rng.random(len(device)))
    marked = {(f"dev-{d}", 1_800_000_000.0 + 300.0 * w) for d, w in zip(rng.integers(0, 200, 20_000).tolist(),
                                                                        rng.integers(0, 400, 20_000).tolist())}
    marked |= {("not-in-the-points", 1_800_000_000.0)}
    names = sorted({name for name, _ in marked}, reverse=True)  # another order than the points'
    position = {name: i for i, name in enumerate(names)}
    pairs = sorted(marked)
    away = SeriesPoints(names, np.array([position[n] for n, _ in pairs], dtype=np.int32),
                        np.array([t for _, t in pairs]), np.ones(len(pairs)))
    kept = without_windows_away(points, away)
    expected = np.array([(things[d], t) not in marked for d, t in zip(device.tolist(), times.tolist())])
    assert 0 < expected.sum() < len(expected)
    assert kept.things is things
    assert kept.thing_index.tolist() == device[expected].tolist() and kept.times.tolist() == times[expected].tolist()
    assert kept.values.tolist() == points.values[expected].tolist()


def test_nothing_away_is_the_points_themselves() -> None:
    points = SeriesPoints(["a"], np.zeros(3, dtype=np.int32), np.array([1.0, 2.0, 3.0]), np.ones(3))
    assert without_windows_away(points, SeriesPoints([], np.zeros(0, dtype=np.int32), np.zeros(0), np.zeros(0))) is points
    elsewhere = SeriesPoints(["b"], np.zeros(1, dtype=np.int32), np.array([2.0]), np.ones(1))
    assert without_windows_away(points, elsewhere) is points
    assert without_windows_away(points, SeriesPoints(["a"], np.zeros(1, dtype=np.int32), np.array([2.5]),
                                                     np.ones(1))) is points
