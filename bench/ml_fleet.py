"""A simulated fleet for the ML Detect benchmark: one metric with daily and weekly rhythms, devices
that differ from each other, and labelled anomalies of several kinds.

The metric is bytes out per 5-minute report (``aws:all-bytes-out``), around the simulator's 40 KB
per report (iotdefender/simulator/devices.py) — but generated with numpy, as 100k devices x 14 days
is 403M datapoints. Every device is, on the log scale:

    y = level + amplitude * rhythm(kind, local time) + noise * e

* ``level``: lognormal around 40 KB, ±0.8 on the log scale (a factor of 2.2 either way);
* ``rhythm`` of one of four kinds of device — ``office`` (busy on weekday afternoons, quiet at
  weekends), ``night-batch`` (uploads at 02:00 every day), ``consumer`` (evenings, busier at
  weekends), ``flat`` — in one of four time zones (UTC-5, UTC, UTC+1, UTC+8), with an amplitude
  between 0.3 and 1.2 on the log scale: the fleet has no single shape;
* ``noise``: between 0.05 and 0.4 (log-uniform), Gaussian for 90 % of devices and Student-t with
  5 degrees of freedom (scaled to the same spread) for 10 %: some devices are spiky by nature.

Anomalies (only in the evaluation period, each on its own device, ``sigma`` = the standard
deviation of the device's noise):

* ``spike``: one datapoint ``k`` sigma above the device's normal value (its level and rhythm,
  without noise), k in 3, 4, 5, 6, 8, 10, 15. On a device with Gaussian noise that is "a spike of k
  MAD" with the MAD scaled to a standard deviation (1.4826 x the raw MAD). On a Student-t device
  the scaled MAD of its noise is 0.8345 sigma (``robust_scale``), so the same spike is 1.198 k of
  its own MADs (``spike_size_in_mad``): 3, 4, 5, ... sigma are 3.6, 4.8, 6.0, ... MAD;
* ``level-shift``: from a moment on, 4 to 10 sigma up or down, to the end;
* ``drift``: a ramp from 0 to 12 sigma over two days, then held;
* ``new-behaviour``: activity at 03:00 local time, when the device was idle: a two-hour bump of
  max(6 sigma, its own daily amplitude);
* ``group-shift``: every device of one (kind, time zone) cohort, 5 sigma up at the same moment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

START = 1_800_000_000.0 - (1_800_000_000.0 - 345_600.0) % (7 * 86_400.0)  # a Monday 00:00 UTC
STEP = 300.0  # the AWS agent reports every 5 minutes: 288 datapoints per device-day
DAY = 86_400.0
KINDS = ("office", "night-batch", "consumer", "flat")
KIND_SHARE = (0.4, 0.2, 0.3, 0.1)
ZONES = (-5.0, 0.0, 1.0, 8.0)
SPIKES = (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0)
ANOMALY_KINDS = ("spike", "level-shift", "drift", "new-behaviour", "group-shift")


@dataclass(frozen=True)
class Devices:
    names: list[str]
    level: np.ndarray
    kind: np.ndarray  # index into KINDS
    zone: np.ndarray  # index into ZONES
    amplitude: np.ndarray
    sigma: np.ndarray
    heavy: np.ndarray  # Student-t noise
    phase: np.ndarray  # seconds into each 5-minute slot the device reports at


@dataclass(frozen=True)
class Anomaly:
    kind: str
    device: int
    start: int  # index of the first anomalous report (in the device's evaluation reports)
    stop: int  # one past the last
    magnitude: float  # in sigma


@dataclass(frozen=True)
class Period:
    """Device-major columns: device d's reports are rows d*per_device .. (d+1)*per_device-1."""

    device: np.ndarray  # int32
    time: np.ndarray  # float64
    value: np.ndarray  # float32 (bytes; float32 halves 100k x 14 days to 1.6 GB)
    per_device: int


def make_devices(n: int, seed: int) -> Devices:
    rng = np.random.default_rng(seed)
    return Devices(
        names=[f"thing-{i:06d}" for i in range(n)],
        level=np.log(40_000.0) + rng.normal(0.0, 0.8, n),
        kind=rng.choice(len(KINDS), size=n, p=KIND_SHARE),
        zone=rng.integers(0, len(ZONES), n),
        amplitude=rng.uniform(0.3, 1.2, n),
        sigma=np.exp(rng.uniform(np.log(0.05), np.log(0.4), n)),
        heavy=rng.random(n) < 0.1,
        phase=rng.uniform(0.0, STEP, n),
    )


# 1.4826 x the MAD of Student-t noise with 5 degrees of freedom scaled to unit variance: the
# t(5) distribution's upper quartile, 0.726687, over its standard deviation, sqrt(5/3).
STUDENT_T_ROBUST_SCALE = 1.4826 * 0.7266868438004226 / math.sqrt(5 / 3)


def robust_scale(devices: Devices) -> np.ndarray:
    """Each device's own robust scale on the log scale: 1.4826 x the MAD of its noise (of the
    distribution it is drawn from, not an estimate): sigma for Gaussian noise, 0.8345 sigma for
    Student-t noise."""
    return devices.sigma * np.where(devices.heavy, STUDENT_T_ROBUST_SCALE, 1.0)


def spike_size_in_mad(devices: Devices, anomaly: Anomaly) -> float:
    """A spike's size in its device's own robust scale (``robust_scale``)."""
    return anomaly.magnitude / (STUDENT_T_ROBUST_SCALE if devices.heavy[anomaly.device] else 1.0)


def noise_exceedance(k: float, heavy: bool) -> float:
    """The chance that one datapoint's noise is more than ``k`` sigma above the device's normal
    value: Gaussian, or Student-t with 5 degrees of freedom scaled to unit variance (its
    distribution function in closed form, for 5 degrees of freedom)."""
    if math.isinf(k):
        return 0.0
    if not heavy:
        return 0.5 * math.erfc(k / math.sqrt(2.0))
    theta = math.atan(k * math.sqrt(5 / 3) / math.sqrt(5.0))
    c = math.cos(theta)
    return (1.0 - 2.0 / math.pi * (theta + math.sin(theta) * (c + 2.0 / 3.0 * c ** 3))) / 2.0


def first(devices: Devices, n: int) -> Devices:
    """The first ``n`` devices (to evaluate a model trained on a large fleet on part of it)."""
    return Devices(devices.names[:n], *(getattr(devices, f)[:n] for f in
                                        ("level", "kind", "zone", "amplitude", "sigma", "heavy", "phase")))


def rhythm(kind: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Each kind's shape at local time ``local`` (seconds since a Monday 00:00), between about -0.5 and 1."""
    hour = (local % DAY) / 3600.0
    weekday = ((local // DAY) % 7).astype(np.int64)
    weekend = weekday >= 5

    def bump(center: float, width: float) -> np.ndarray:
        distance = np.minimum(np.abs(hour - center), 24 - np.abs(hour - center))
        return np.exp(-0.5 * (distance / width) ** 2)

    office = np.where(weekend, 0.2, 1.0) * bump(14.0, 3.0) - 0.3
    night = bump(2.0, 1.0) - 0.1
    consumer = np.where(weekend, 1.3, 1.0) * bump(20.0, 2.5) - 0.3
    shapes = np.stack([office, night, consumer, np.zeros_like(hour)])
    return np.take_along_axis(shapes, kind[None, :], axis=0)[0]


def normal_log(devices: Devices, device: np.ndarray, time: np.ndarray) -> np.ndarray:
    """The noiseless log value: level plus rhythm (at the start of the report's 5-minute slot)."""
    local = (time - START) // STEP * STEP + ZONES_SECONDS[devices.zone[device]]
    return devices.level[device] + devices.amplitude[device] * rhythm(devices.kind[device], local)


ZONES_SECONDS = np.array(ZONES) * 3600.0


def generate(devices: Devices, first_day: int, days: int, seed: int, chunk: int = 2_000) -> Period:
    """Normal reports of every device from ``first_day`` (whole days after START) for ``days`` days.

    The rhythm is read from a table per (kind, zone) and 5-minute slot of the week (the reporting
    phase within a slot does not move it), so 100k devices x 14 days generate in about a minute.
    """
    rng = np.random.default_rng(seed)
    n = len(devices.names)
    per_device = int(days * DAY / STEP)
    slot = np.arange(per_device) + int(first_day * DAY / STEP)
    week_slots = int(7 * DAY / STEP)
    week = START + np.arange(week_slots) * STEP
    table = np.stack([rhythm(np.full(week_slots, k), week - START + ZONES_SECONDS[z])
                      for k in range(len(KINDS)) for z in range(len(ZONES))]).astype(np.float32)
    cohort = devices.kind * len(ZONES) + devices.zone
    shape = table[:, slot % week_slots]  # [cohorts, per_device]
    device = np.repeat(np.arange(n, dtype=np.int32), per_device)
    time = np.empty(n * per_device)
    value = np.empty(n * per_device, dtype=np.float32)
    base = START + slot * STEP
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        rows = slice(lo * per_device, hi * per_device)
        time[rows] = (base[None, :] + devices.phase[lo:hi, None]).ravel()
        e = rng.standard_normal((hi - lo, per_device), dtype=np.float32)
        for i in np.flatnonzero(devices.heavy[lo:hi]):
            e[i] = rng.standard_t(5, per_device) / np.sqrt(5 / 3)
        y = (devices.level[lo:hi, None].astype(np.float32)
             + devices.amplitude[lo:hi, None].astype(np.float32) * shape[cohort[lo:hi]]
             + devices.sigma[lo:hi, None].astype(np.float32) * e)
        value[rows] = np.expm1(y).ravel()
    return Period(device, time, value, per_device)


def inject(devices: Devices, period: Period, share: float, seed: int) -> list[Anomaly]:
    """Anomalies on ``share`` of the devices (changing ``period.value`` in place), labelled."""
    rng = np.random.default_rng(seed)
    n = len(devices.names)
    per = period.per_device
    chosen = rng.permutation(n)[: max(12, int(n * share))]
    anomalies: list[Anomaly] = []
    # One (kind, zone) cohort shifts together: the group-shift devices.
    cohort_kind, cohort_zone = int(rng.integers(len(KINDS))), int(rng.integers(len(ZONES)))
    cohort = np.flatnonzero((devices.kind == cohort_kind) & (devices.zone == cohort_zone))
    cohort = cohort[np.isin(cohort, chosen, invert=True)][: max(2, n // 50)]
    cohort_start = int(rng.integers(per // 4, per // 2))
    for d in cohort:
        anomalies.append(Anomaly("group-shift", int(d), cohort_start, per, 5.0))
    # Half the chosen devices get a spike (spikes are the figure the targets name, so they need
    # numbers), the other half one of the three kinds that last.
    other_kinds = ("spike", "level-shift", "spike", "drift", "spike", "new-behaviour")
    for i, d in enumerate(chosen):
        kind = other_kinds[i % len(other_kinds)]
        start = int(rng.integers(per // 8, per - per // 4))
        if kind == "spike":
            magnitude = SPIKES[(i // 2) % len(SPIKES)]
            anomalies.append(Anomaly(kind, int(d), start, start + 1, magnitude))
        elif kind == "level-shift":
            anomalies.append(Anomaly(kind, int(d), start, per, float(rng.uniform(4, 10) * rng.choice([-1, 1]))))
        elif kind == "drift":
            anomalies.append(Anomaly(kind, int(d), start, per, 12.0))
        else:
            anomalies.append(Anomaly(kind, int(d), start, per, 6.0))
    labelled = []
    for a in anomalies:
        rows = slice(a.device * per + a.start, a.device * per + a.stop)
        t = period.time[rows]
        d = np.full(len(t), a.device)
        sigma = devices.sigma[a.device]
        y = np.log1p(period.value[rows].astype(np.float64))
        if a.kind in ("spike",):
            y = normal_log(devices, d, t) + a.magnitude * sigma
        elif a.kind in ("level-shift", "group-shift"):
            y = y + a.magnitude * sigma
        elif a.kind == "drift":
            ramp = np.minimum(1.0, (t - t[0]) / (2 * DAY))
            y = y + ramp * a.magnitude * sigma
        else:  # new-behaviour: a bump at 03:00 local time
            local_hour = ((t - START + ZONES_SECONDS[devices.zone[a.device]]) % DAY) / 3600.0
            height = max(a.magnitude * sigma, devices.amplitude[a.device])
            added = height * np.exp(-0.5 * ((local_hour - 3.0) / 0.5) ** 2)
            y = y + added
            # Labelled from the first report the new activity moves by 2 sigma.
            a = Anomaly(a.kind, a.device, a.start + int(np.argmax(added >= 2 * sigma)), a.stop, a.magnitude)
        period.value[rows] = np.expm1(y)
        labelled.append(a)
    return labelled
