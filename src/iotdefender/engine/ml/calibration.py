"""From training scores to each device's thresholds per confidence level.

A level is a share of normal datapoints allowed to reach it (``TrainingSettings.exceedance``: HIGH
about 2 per million, one false alarm per 1,000 device-days at 288 reports a day). One threshold for
the fleet does not work: some devices are spiky by nature (heavy tails), and a threshold that keeps
them quiet is blind on the smooth ones, while one that fits the smooth ones alarms on the spiky all
day. So devices are put into ``cohorts`` by how heavy their tail is (the kurtosis of their
training scores, or of their successive differences when training sampled: tails.py) and each
cohort gets its own thresholds from the pooled scores of its devices: one set for both sides of
the centre where they are alike, one per side where they differ (``symmetric``).

Where a cohort has too few scores to read a quantile that far out, the tail above a high quantile
is fitted with a generalised Pareto distribution (method of moments — the peaks-over-threshold
method of extreme value theory) and the threshold read from the fit — averaged over the fit's own
sampling uncertainty (``_predictive_quantile``), as new datapoints reach a threshold read from a
few hundred excesses more often than one read from the true tail. A first model has no previous
model to leave the anomalies of its training window out, and a few of them outnumber HIGH's share:
the fit leaves out the excesses a robust (quantile) fit of the same tail says it cannot hold, and
when training sampled, the devices that crowd a cohort's tail are found (``crowding_devices``) and
calibrated apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

_TAIL_POINTS = 50  # read a quantile directly when at least this many scores lie beyond it
#: The heaviest tail shape a fit may read (generalised Pareto xi; Student-t of 5 degrees of freedom is
#: 0.2); ``SMALL_COUNT_SHAPE`` for a small count's scores (``thresholds``' ``max_shape``).
MAX_SHAPE = 0.5
#: A small count's tail on the log scale is at most exponential: log(1 + X) of a Poisson or a
#: negative binomial count has a lighter one, of a Pareto count (on the raw scale) an exponential
#: one. Its scores sit in clusters, one a whole number (0, 1, 2...), each cluster spread a little by
#: the devices' and slots' spreads, and a fit's threshold inside a cluster reads many small excesses
#: and a few whole numbers further out: a heavy tail to the moments and to the quantiles alike. On
#: 50 devices x 7 days, Poisson counts of mean 0.2, 0.5 and 1 had HIGH's upper edge at 841, 464 and
#: 104 a window, where their true one-in-a-million is 5, 6 and 8 (tests/unit/test_ml_counts.py).
SMALL_COUNT_SHAPE = 0.0
_FIT_POINTS = 2_000  # else fit the tail on this many of the largest scores (at most 5 % of them)
_UPPER = 0.95  # the robust tail fit's shape comes from this quantile of the excesses and their median
_OUTLIER = 1e-3  # an excess with less than this chance in a tail of its size under the robust fit is left out
# A device whose r largest scores sit higher in its cohort than alike devices' would with a chance
# below this crowds the cohort's tail (``crowding_devices``).
_CROWDED = 1e-4
# A kurtosis this many standard errors above normal noise's tells a tail apart as heavier (``heavier_than_normal``).
_APART = 6.0
# ... which tells a tail like the benchmark's Student-t noise (5 degrees of freedom) apart in 99.3 %
# of devices at 1,000 values (simulated; 85 % at 500, 75 % at 384): with fewer values a device (the
# median over the devices), ranks alone place the devices, as before (``Layout``).
_TOLD_APART_VALUES = 1_000
# Gauss-Hermite nodes and weights for a standard normal (``_predictive_quantile``).
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(15)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def cohorts(rate: npt.NDArray[np.float64], members: npt.NDArray[np.bool_], n_cohorts: int) -> npt.NDArray[np.uint8]:
    """Cohort per device (equal-sized by rank of ``rate``, 1 = lightest tail); 0 for non-members."""
    result = np.zeros(len(rate), dtype=np.uint8)
    rows = np.flatnonzero(members)
    if len(rows):
        order = rows[np.argsort(rate[rows], kind="stable")]
        result[order] = 1 + (np.arange(len(order)) * n_cohorts // len(order)).astype(np.uint8)
    return result


class Layout:
    """How many tail cohorts the near-normal devices get and how many those whose kurtosis tells
    their tail apart as heavier than normal noise's (``heavier_than_normal``).

    Cohorts were equal-sized by the rank of each device's kurtosis, which put their boundaries
    where the counts fall, and a cohort could straddle two kinds of tail: on the benchmark's fleet
    (a tenth of it Student-t noise, the rest normal; bench/README.md, "HIGH over independent draws;
    tail cohorts that a test tells apart") with 16 cohorts of 125 devices, the second heaviest held ~60 devices with normal
    noise beside ~60 Student-t ones and judged them by the Student-t devices' HIGH threshold (16-18
    robust standard deviations instead of ~4.9): no spike of 5-15 on them was HIGH. The heavy
    devices now get cohorts of their own, as many as their share of the devices (one at least), the
    near-normal ones the rest; equal-sized by rank within each kind.

    Only where the test can tell such tails apart: with a few hundred values a device (200 devices
    x 384 datapoints, bench/ml_small.py) a quarter of the Student-t devices pass for normal, and kept
    out of the heavy cohorts they met the near-normal cohorts' HIGH thresholds: 41 HIGH over 20
    trainings where 16 are stated (16 with ranks alone, whose heavy cohorts took them in by rank).
    Below ``_TOLD_APART_VALUES`` values a device, ranks alone decide, as before.
    """

    __slots__ = ("heavy", "counts")

    def __init__(self, heavy: npt.NDArray[np.bool_], count: npt.NDArray[np.number],
                 members: npt.NDArray[np.bool_], n_cohorts: int) -> None:
        """``heavy``: ``heavier_than_normal`` per device, of ``count`` values each."""
        self.heavy = heavy if members.any() and float(np.median(count[members])) >= _TOLD_APART_VALUES \
            else np.zeros(len(heavy), dtype=bool)
        n, n_heavy = int(np.count_nonzero(members)), int(np.count_nonzero(self.heavy & members))
        if n_heavy in (0, n) or n_cohorts < 2:
            heavy_cohorts = n_cohorts if n_heavy == n and n else 0
        else:
            heavy_cohorts = min(max(round(n_cohorts * n_heavy / n), 1), n_cohorts - 1)
        self.counts = (n_cohorts - heavy_cohorts, heavy_cohorts)  # near-normal, heavy

    @property
    def n_cohorts(self) -> int:
        return sum(self.counts)

    def cohorts(self, rate: npt.NDArray[np.float64], members: npt.NDArray[np.bool_],
                heavy: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.uint8]:
        """``cohorts`` within each kind (``heavy``: which devices are heavy, if not this layout's
        own): the near-normal ones first, then the heavy; where a kind has no cohort, its devices
        go to the other's."""
        heavy = self.heavy if heavy is None else heavy
        light, heavier = self.counts
        if not light or not heavier:
            return cohorts(rate, members, self.n_cohorts)
        result = cohorts(rate, members & ~heavy, light)
        inside = members & heavy
        result[inside] = light + cohorts(rate, inside, heavier)[inside]
        return result


def heavier_than_normal(kurtosis: npt.NDArray[np.float64], count: npt.NDArray[np.number]) -> npt.NDArray[np.bool_]:
    """Per device, whether the ``kurtosis`` of its ``count`` values (scores, or successive
    differences: 3 for normal noise) is more than ``_APART`` of its standard errors under normal
    noise (sqrt(24 / count)) above 3: a tail told apart from normal noise as heavier.

    The sample kurtosis is skewed to the right, so the standard error understates how far normal
    noise reaches: simulated (scores capped as training caps them), normal noise passes 6 standard
    errors in none of 10,000 devices at 2,000 and at 4,000 values, once in 20,000 at 1,000, about
    once in 10,000 at 384; Student-t noise with 5 degrees of freedom, the benchmark's spiky devices,
    is told apart always from 2,000 values, in 99.3 % of devices at 1,000 and 75 % at 384 (hence
    ``_TOLD_APART_VALUES``). Training reads the kurtosis of a device's scores without its largest
    (one anomaly in the window is not a heavy tail). Lighter than normal (a level that moved inside
    the window: two levels in one device's scores) is not told apart: given cohorts of their own, such devices raised the near-normal cohorts' HIGH thresholds
    of a model trained with anomalies in its window (median 5.21 -> 5.83) and tripled its HIGH false
    alarms (7.0 -> 23.1 per 1,000 device-days; bench/README.md).
    """
    result: npt.NDArray[np.bool_] = _kurtosis_z(kurtosis, count) > _APART
    return result


def _kurtosis_z(kurtosis: npt.NDArray[np.float64], count: npt.NDArray[np.number]) -> npt.NDArray[np.float64]:
    """Kurtosis less normal noise's 3, in its standard errors under normal noise; 0 without values."""
    # Quiet: a count of 0 divides by zero, and the kurtosis of a nearly constant device's scores
    # (a variance of ~1e-160) overflows the division; both give 0 below, as before, without the
    # RuntimeWarning an operator's trial found in the service's log.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        z = (np.asarray(kurtosis, dtype=np.float64) - 3.0) / np.sqrt(24.0 / np.asarray(count, dtype=np.float64))
    result: npt.NDArray[np.float64] = np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
    return result


#: Sides of the centre are told apart when, beyond any of these quantiles of the scores' distances
#: (where at least ``_SIDE_POINTS`` lie), the counts above and below differ by more than this many
#: of their standard deviations under symmetry (binomial, a half each; ``symmetric``).
_SIDE_QUANTILES = (0.9, 0.99, 0.999)
_SIDE_POINTS = 20
_SIDE_APART = 4.0


def sides(scores: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Signed ``scores`` as two one-sided sets of the same length: how far each is above the centre
    (0 for those below), and how far below (0 for those above). Zeros keep the other side's
    datapoints in the count, so a quantile of either set is a share of all datapoints."""
    return np.maximum(scores, np.float32(0)), np.maximum(-scores, np.float32(0))


def symmetric(scores: npt.NDArray[np.float32], distance: npt.NDArray[np.float32]) -> bool:
    """Whether signed ``scores`` are as many above the centre as below it beyond each of
    ``_SIDE_QUANTILES`` of their distances (``distance``: their absolute values, which every caller
    has at hand) within ``_SIDE_APART`` standard deviations.

    On the log scale a metric's noise is often not symmetric: a percentage's normal noise has a
    longer lower tail there, a small count's zeros lie far below its centre. One threshold per
    level read from both sides' distances mirrored the longer side onto the other: on 200 devices x
    14 days a CPU at 35 +- 4 % had a HIGH band up to 83 %, a count of 3 with 4 % zeros up to 166 (a
    20-fold flood normal), a Poisson count of 7.5 up to 3,579 (``tests/unit/test_ml_sides.py``). Such sides get thresholds
    of their own (``thresholds``), each from its half of the exceedances. Where the sides cannot be
    told apart both are read from all the distances: half of them each made HIGH's threshold of a
    near-normal cohort of 2,000-8,000 scores a tenth to a third of a standard deviation higher and
    as much more uncertain (the threshold is averaged over its own uncertainty), blind to more
    5-sigma spikes. A few anomalies on one side, beyond every tested quantile, do not split it."""
    n = len(distance)
    for quantile in _SIDE_QUANTILES:
        if n * (1 - quantile) < _SIDE_POINTS:
            break
        edge = np.float32(np.quantile(distance, quantile))
        above, below = int(np.count_nonzero(scores > edge)), int(np.count_nonzero(scores < -edge))
        if abs(above - below) > _SIDE_APART * math.sqrt(max(above + below, 1)):
            return False
    return True


def thresholds(scores: npt.NDArray[np.float32], exceedance: list[float], floors: list[float],
               max_shape: float = MAX_SHAPE, lightest: list[float] | None = None) -> list[float]:
    """Per side (above the centre, then below) and level, the distance that the level's
    ``exceedance`` of signed ``scores`` reach beyond it (half of it on each side when the sides
    differ: ``symmetric``), at least ``floors`` and the ``lightest`` tail's (default: the normal
    distribution's, ``normal_quantiles``), non-decreasing; a tail fit reads a shape of at most
    ``max_shape``."""
    distance = np.abs(scores)
    floors = _with_lightest(floors, exceedance, lightest)
    both = _side_thresholds(distance, exceedance, floors, 1, max_shape)
    if symmetric(scores, distance):
        return both * 2
    above, below = (_side_thresholds(side, exceedance, floors, 2, max_shape) for side in sides(scores))
    return _heavier_side_at_least(above, below, both)


def _heavier_side_at_least(above: list[float], below: list[float], both: list[float]) -> list[float]:
    """Per level, the side with the higher threshold (the heavier tail there) no lower than
    ``both``, the threshold both sides' distances give together: that one leaves the level's share
    beyond it on the two sides together, so at least half of it on the heavier, whose own threshold
    for half the share is then at least as far. Read from half the scores, a side's threshold is
    the noisier: on 20 devices x 1,000 datapoints of normal noise in bytes (longer below on the log
    scale), the lower side's HIGH came out 6.1-8.4 over five trainings and the 6.1 gave 22 of 32
    HIGH on fresh normal datapoints, 3.2 times the side's share (bench/ml_small.py; both sides
    together read 8.0)."""
    result_above, result_below = list(above), list(below)
    for i, together in enumerate(both):
        heavier = result_above if above[i] >= below[i] else result_below
        heavier[i] = max(heavier[i], together)
    for side in (result_above, result_below):  # non-decreasing over the levels, as each side was
        for i in range(1, len(side)):
            side[i] = max(side[i], side[i - 1])
    return result_above + result_below


def _side_thresholds(distance: npt.NDArray[np.float32], exceedance: list[float], floors: list[float],
                     split: int, max_shape: float) -> list[float]:
    """``distance``: of both sides (``split`` 1) or of one (2: the other's as zeros)."""
    result: list[float] = []
    n = len(distance)
    for share, floor in zip(exceedance, floors):
        value = _tail_quantile(distance, share / split, max_shape) if n else floor
        result.append(max(value, floor, result[-1] if result else floor))
    return result


def _with_lightest(floors: list[float], exceedance: list[float], lightest: list[float] | None) -> list[float]:
    """Each level's floor, raised to the lightest tail's quantile of its share."""
    return [max(floor, light) for floor, light in zip(floors, lightest or normal_quantiles(exceedance))]


def normal_quantiles(exceedance: list[float]) -> list[float]:
    """Per level the score a standard normal's |z| exceeds with its share (``normal_quantile``)."""
    return [normal_quantile(share) for share in exceedance]


#: How far above the bulk (its 90th percentile) the largest of a fleet's scores must stand to be a
#: cluster of its own rather than the end of a tail. Student-t noise of 5 degrees of freedom (the
#: benchmark's heaviest) puts its largest of 1,000 scores ~3 times its 90th percentile, of a million
#: ~12 times (where its largest is past HIGH's quantile already, so the cap below never binds); one
#: device at 300 times the fleet's level, in a fleet of 5 % noise, ~40 times.
_APART_FROM_BULK = 10.0


def within_reach(levels: list[float], scores: npt.NDArray[np.float32], exceedance: list[float],
                 floors: list[float], lightest: list[float] | None = None) -> list[float]:
    """``levels`` (``thresholds`` of signed ``scores``) no further on each side than that side's
    largest distance plus each level's floor (never below the floor or the normal quantile
    ``thresholds`` keeps), when that largest stands apart from the bulk (``_APART_FROM_BULK``):
    for the fleet's scores (training.py), which hold how far each device's level is from the
    fleet's, not only noise. One device at another level is a cluster of alike scores among the
    few largest, which the tail fit reads as a tail and extrapolates thousands of times further out
    (a HIGH of 288-1,825 robust standard deviations, bands of 1e13-1e66 bytes, a 2,500x jump judged
    normal); the fit has nothing beyond the farthest training datapoint. A heavy tail's largest is
    not apart, and keeps its fit."""
    if not len(scores):
        return levels
    distance = np.abs(scores)
    bulk = _APART_FROM_BULK * float(np.quantile(distance, 0.9))
    farthest = float(distance.max()) if symmetric(scores, distance) else None
    light = lightest or normal_quantiles(exceedance)
    result: list[float] = []
    for side, side_levels in zip(sides(scores), (levels[:len(exceedance)], levels[len(exceedance):])):
        reach = farthest if farthest is not None else float(side.max())
        result += side_levels if reach <= bulk else [
            min(value, max(reach + floor, quantile)) for value, quantile, floor in zip(side_levels, light, floors)]
    return result


def mixed_thresholds(scores: npt.NDArray[np.float32], other: npt.NDArray[np.float32], weight: float,
                     exceedance: list[float], floors: list[float], max_shape: float = MAX_SHAPE,
                     lightest: list[float] | None = None) -> list[float]:
    """``thresholds`` of a mixture: signed ``scores``' tails with a share ``weight`` of ``other``'s
    in them — per side and level the distance that the two together exceed with the level's
    ``exceedance`` (half of it on each side when either set's sides differ: ``symmetric``; between
    the thresholds each gives alone), at least ``floors`` and the ``lightest`` tail's, non-decreasing."""
    distance, other_distance = np.abs(scores), np.abs(other)
    floors = _with_lightest(floors, exceedance, lightest)
    both = _side_mixed_thresholds(distance, other_distance, weight, exceedance, floors, 1, max_shape)
    if symmetric(scores, distance) and symmetric(other, other_distance):
        return both * 2
    above, below = (_side_mixed_thresholds(own, them, weight, exceedance, floors, 2, max_shape)
                    for own, them in zip(sides(scores), sides(other)))
    return _heavier_side_at_least(above, below, both)


def _side_mixed_thresholds(scores: npt.NDArray[np.float32], other: npt.NDArray[np.float32], weight: float,
                           exceedance: list[float], floors: list[float], split: int, max_shape: float) -> list[float]:
    own, them = Tail(scores, max_shape), Tail(other, max_shape)
    result: list[float] = []
    for share, floor in zip(exceedance, floors):
        side_share = share / split
        low = _tail_quantile(scores, side_share, max_shape) if len(scores) else floor
        high = max(low, _tail_quantile(other, side_share, max_shape))
        for _ in range(60):
            middle = (low + high) / 2
            if (1 - weight) * own.beyond(middle) + weight * them.beyond(middle) > side_share:
                low = middle
            else:
                high = middle
        result.append(max(high, floor, result[-1] if result else floor))
    return result


def crowding_devices(scores: npt.NDArray[np.float32], owner: npt.NDArray[np.integer]) -> npt.NDArray[np.integer]:
    """The devices (values of ``owner``, each score's device) that crowd a cohort's tail: far more
    of their ``scores`` are among the cohort's largest than alike tails would put there —
    anomalies that last inside the training window, or a device the model does not fit.

    A level shift, a drift or a new behaviour (a bump every night) gives its device dozens of
    large scores. When training samples, the cohorts come from how heavy each device's noise is
    (tails.py: the kurtosis of successive differences, which such a change barely moves), so those
    devices land in every cohort and their scores became the cohorts' tails: HIGH's median threshold
    12.7-13 at 5,000 devices with a fifth of them contaminated, against 5.16 on the same window
    not sampled, where the scores' own kurtosis sends those devices to the heaviest cohorts
    (bench/README.md). ``_without_outliers`` does not see them: they are many and alike.

    Within a cohort of alike tails, how many of a device's n_d scores are among the cohort's R
    largest (of n) is about Poisson with mean m = n_d R / n. Each of the largest scores the tail
    fit reads is tested: being its device's r-th largest at cohort rank R has a chance of at most
    m^r e^-m / r! / (1 - m / (r + 1)); a device below ``_CROWDED`` at some r crowds. The tests ask
    about devices, not scores: a single spike (r = 1) never fails, that is ``_without_outliers``'
    work. Where the cohort's tails are not alike (a cohort spanning normal and Student-t noise), the
    spikiest devices fail by their noise alone: training asks only of cohorts of near-normal noise
    (training._ALIKE_KURTOSIS).
    """
    n = len(scores)
    k = max(10, min(_FIT_POINTS, n // 20))  # the tail ``_tail_quantile`` fits
    if k >= n:
        return owner[:0]
    top = np.argpartition(scores, n - k)[n - k:]
    top = top[np.argsort(scores[top], kind="stable")[::-1]]  # the k largest, largest first
    device = owner[top]
    per_device = np.bincount(owner)[device]  # one pass, no sort of the cohort's scores
    # Each top score's rank within its device (1: its largest): a stable sort by device keeps their order.
    by_device = np.argsort(device, kind="stable")
    sorted_device = device[by_device]
    starts = np.flatnonzero(np.concatenate(([True], sorted_device[1:] != sorted_device[:-1])))
    r = np.empty(k, dtype=np.float64)
    r[by_device] = np.arange(k) - np.repeat(starts, np.diff(np.append(starts, k))) + 1.0
    m = per_device * np.arange(1, k + 1, dtype=np.float64) / n
    crowded = (r >= 2) & _unlikely(r, m)
    result: npt.NDArray[np.integer] = np.unique(device[crowded])
    return result


def crowding_by_counts(beyond: npt.NDArray[np.int64], outside: npt.NDArray[np.int64],
                       cohort: npt.NDArray[np.uint8], tested: npt.NDArray[np.bool_], rounds: int = 3,
                       ) -> npt.NDArray[np.bool_]:
    """Per device: whether far more of its datapoints outside the sample lie far off its fit
    (``beyond`` of ``outside``: refit.FullFit) than its cohort's rate, among the ``tested``
    devices (cohorts of alike tails).

    ``crowding_devices`` tests the sample's scores, ~117 a device at 100k devices: a device with a
    bump every night has ~5 of them sampled, too few to tell when ~200 such devices share a cohort
    (HIGH's median there 15.8 -> 11.3 only). All its datapoints tell at once: ~100 far off against
    ~0.25 for normal noise. The cohort's rate is pooled over its devices not yet found (``rounds``
    times, so the crowding devices do not lift the rate they are judged by); the chance is the same
    Poisson bound as ``crowding_devices``'.
    """
    found = np.zeros(len(beyond), dtype=bool)
    count = beyond.astype(np.float64)
    size = outside.astype(np.float64)
    for _ in range(rounds):
        kept = tested & ~found
        far = np.bincount(cohort[kept], weights=count[kept], minlength=256)
        seen = np.bincount(cohort[kept], weights=size[kept], minlength=256)
        rate = np.where(seen > 0, far / np.maximum(seen, 1.0), 0.0)
        now = tested & (count >= 2) & _unlikely(np.maximum(count, 1.0), np.maximum(size * rate[cohort], 1e-12))
        if not (now & ~found).any():
            break
        found |= now
    return found


def _unlikely(r: npt.NDArray[np.float64], m: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Whether a Poisson count of mean ``m`` reaches ``r`` with a chance below ``_CROWDED``, by
    the bound m^r e^-m / r! / (1 - m / (r + 1)) (for r + 1 > m; else never)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        log_chance = r * np.log(m) - m - _log_factorial(r) - np.log1p(-m / (r + 1))
    result: npt.NDArray[np.bool_] = (m < r + 1) & (log_chance < math.log(_CROWDED))
    return result


def _log_factorial(r: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """log(r!) by Stirling's series (off by less than 3e-3 from r = 1)."""
    result: npt.NDArray[np.float64] = r * np.log(r) - r + 0.5 * np.log(2 * np.pi * r) + 1 / (12 * r)
    return result


def normal_quantile(share: float) -> float:
    """The score a standard normal's |z| exceeds with probability ``share``: no cohort is taken to
    have a lighter tail than that (a tail fit on few scores can come out lighter than it is)."""
    low, high = 0.0, 40.0
    for _ in range(100):
        middle = (low + high) / 2
        if math.erfc(middle / math.sqrt(2)) > share:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _tail_quantile(scores: npt.NDArray[np.float32], share: float, max_shape: float) -> float:
    n = len(scores)
    if n * share >= _TAIL_POINTS:
        return float(np.quantile(scores, 1 - share))
    fit = _TailFit.of(scores, max_shape)
    if fit.pareto is None:
        return fit.u
    ratio = (fit.k / n) / share
    xi, mean = fit.pareto
    if fit.k < _TAIL_POINTS:
        # Too few excesses for their estimates' sampling distributions (ties of a small count's
        # scores: a few distinct values); the clamp above and the floors bound the threshold.
        return _pareto_quantile(fit.u, xi, mean * (1 - xi), ratio)
    return _predictive_quantile(fit.u, mean, xi, fit.k, ratio, max_shape)


class _TailFit:
    """The generalised Pareto fit of a set of scores' largest that ``_tail_quantile`` reads: above
    ``u``, the ``k``-th largest score, a shape and mean excess (None: no tail above ``u``)."""

    __slots__ = ("u", "k", "pareto")

    def __init__(self, u: float, k: int, pareto: tuple[float, float] | None) -> None:
        self.u, self.k, self.pareto = u, k, pareto

    @classmethod
    def of(cls, scores: npt.NDArray[np.float32], max_shape: float) -> _TailFit:
        n = len(scores)
        k = max(10, min(_FIT_POINTS, n // 20))
        if k >= n:
            return cls(float(scores.max()), k, None)
        top = np.partition(scores, n - k - 1)[n - k - 1:].astype(np.float64)
        u = top[0]
        excess = top[1:] - u
        if k >= _TAIL_POINTS:
            excess = _without_outliers(excess)
        mean, var = float(excess.mean()), float(excess.var())
        if mean <= 0:
            return cls(float(u), k, None)
        # Generalised Pareto by moments: shape xi, scale sigma; P(S > u + x) = (k/n) (1 + xi x / sigma)^(-1/xi).
        xi = 0.5 * (1 - mean * mean / var) if var > 0 else 0.0
        # On fewer than _TAIL_POINTS tail scores (a model trained on a few hundred datapoints) a shape
        # is noise, and a positive one read from 10 tied scores of a small count reached 150 standard
        # deviations at HIGH: a tail that short is taken to be at most exponential.
        xi = min(max(xi, -0.5), max_shape if k >= _TAIL_POINTS else min(max_shape, 0.0))
        # The scale is the moments' for the shape as clamped, mean (1 - xi) (mean excess = sigma /
        # (1 - xi)); the unclamped formula, 0.5 mean (mean^2 / var + 1), is the same before clamping but grows without bound as
        # tied scores make var small, which put a threshold 10 standard deviations above the largest score.
        return cls(float(u), k, (xi, mean))


class Tail:
    """The share of a set of scores' distribution beyond any score, as ``thresholds`` reads its
    quantiles: the scores themselves where at least ``_TAIL_POINTS`` lie beyond, further out the
    tail fit (averaged over its uncertainty, as ``_predictive_quantile``)."""

    def __init__(self, scores: npt.NDArray[np.float32], max_shape: float) -> None:
        self._sorted = np.sort(scores.astype(np.float64))
        self._fit = _TailFit.of(scores, max_shape) if len(scores) else None
        self._excess_beyond: Callable[[float], float] | None = None
        if self._fit is not None and self._fit.pareto is not None:
            xi, mean = self._fit.pareto
            self._excess_beyond = _predictive_beyond(mean, xi, self._fit.k if self._fit.k >= _TAIL_POINTS else 0,
                                                     max_shape)

    def beyond(self, x: float) -> float:
        n = len(self._sorted)
        if not n:
            return 0.0
        count = n - int(np.searchsorted(self._sorted, x, side="right"))
        fit = self._fit
        if count >= _TAIL_POINTS or fit is None or fit.k >= n or x <= fit.u:
            return count / n
        return fit.k / n * self._excess_beyond(x - fit.u) if self._excess_beyond is not None else 0.0


def _predictive_quantile(u: float, mean: float, xi: float, k: int, ratio: float, max_shape: float) -> float:
    """The score above ``u`` that a generalised Pareto tail leaves ``1 / ratio`` of its excesses
    beyond, averaged over what the ``k`` excesses leave unknown of it: the threshold new datapoints
    will meet with the share the level states, not the point estimate's quantile.

    The moments' shape ``xi`` and mean excess ``mean`` (the scale is mean (1 - xi)) come from ``k``
    excesses and a threshold reads the fit ``ratio`` times further out than the excesses reach (a
    tail cohort of 5,500 calibrating scores, 2 per million at HIGH: 25,000 times). An exceedance is
    convex in the threshold, so a threshold that is right on average is reached more often than
    stated: on 200 devices x 384 datapoints a near-normal cohort's shape was -0.1 +- 0.07, and
    fresh datapoints of normal-noise devices reached HIGH 1.7 times as often as stated (1.06 with
    the average; bench/README.md, "The thresholds' own uncertainty"). The share beyond is
    averaged over the estimates' sampling distributions (normal, Gauss-Hermite nodes): the shape's
    variance is Hosking and Wallis' for the moments' estimator ("Parameter and quantile estimation
    for the generalized Pareto distribution", 1987; its formula holds below a shape of 1/4, so it
    is read there at most), the mean excess' relative variance 1 / ((1 - 2 xi) k); the shape stays
    within its clamp (``max_shape`` above). With 2,000 excesses (the benchmark's cohorts) the threshold moves by a few
    hundredths.
    """
    beyond = _predictive_beyond(mean, xi, k, max_shape)
    shapes, scales = _nodes(mean, xi, k, max_shape)
    target = 1 / ratio
    low, high = 0.0, max(_pareto_quantile(0.0, float(a), float(b), ratio) for a, b in zip(shapes, scales))
    for _ in range(60):  # beyond() decreases; the answer lies below the largest of the nodes' quantiles
        middle = (low + high) / 2
        if beyond(middle) > target:
            low = middle
        else:
            high = middle
    return u + high


def _nodes(mean: float, xi: float, k: int, max_shape: float) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Every pair of a shape node and a mean-excess node (the shape's node i, the mean's j at i *
    nodes + j) as shapes and scales: Hosking and Wallis' standard deviation of the moments' shape
    (read at a shape of 1/5 at most), the mean excess' relative one 1 / ((1 - 2 xi) k); ``k`` = 0:
    the point estimate."""
    near = min(max(xi, -0.5), 0.2)
    shape_sd = math.sqrt((1 - near) ** 2 * (1 - 2 * near) ** 2 * (1 - near + 6 * near * near)
                         / ((1 - 3 * near) * (1 - 4 * near)) / k) if k else 0.0
    mean_sd = math.sqrt(1 / ((1 - 2 * near) * k)) if k else 0.0
    shapes = np.repeat(np.clip(xi + shape_sd * _NODES, -0.5, max_shape), len(_NODES))
    scales = np.tile(mean * np.exp(mean_sd * _NODES), len(_NODES)) * (1 - shapes)
    return shapes, scales


def _predictive_beyond(mean: float, xi: float, k: int, max_shape: float) -> Callable[[float], float]:
    """The share of a generalised Pareto tail's excesses beyond an excess, averaged over the
    sampling distributions of its shape ``xi`` and mean excess ``mean`` read from ``k`` excesses
    (``_predictive_quantile``; ``k`` = 0: the point estimate's)."""
    shapes, scales = _nodes(mean, xi, k, max_shape)
    weights = np.outer(_WEIGHTS, _WEIGHTS).ravel()
    exponential = np.abs(shapes) < 1e-6
    inverse = -1 / np.where(exponential, 1.0, shapes)

    def beyond(x: float) -> float:
        """The averaged share of excesses beyond ``x`` (a bounded tail, shape < 0, holds none past its end)."""
        base = np.maximum(1 + shapes * x / scales, 0.0)
        with np.errstate(divide="ignore"):
            share = np.where(exponential, np.exp(-x / scales), np.where(base > 0, base ** inverse, 0.0))
        return float(np.dot(weights, share))

    return beyond


def _pareto_quantile(u: float, xi: float, sigma: float, ratio: float) -> float:
    """The score above ``u`` that a generalised Pareto tail (shape ``xi``, scale ``sigma``) leaves
    ``1 / ratio`` of its excesses beyond."""
    if abs(xi) < 1e-6:
        return float(u + sigma * math.log(ratio))
    return float(u + sigma / xi * (ratio ** xi - 1))


def _without_outliers(excess: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The excesses without those a tail fitted robustly (``_quantile_fit``) gives less than
    ``_OUTLIER`` / len(excess) of a chance: anomalies inside the training window.

    The moments' fit below stays the estimate (it uses every excess, so on a clean tail it is the
    more precise of the two, and a clean tail loses an excess here once in 1 / ``_OUTLIER`` fits);
    the quantiles only say which excesses no tail of that shape holds.
    """
    fit = _quantile_fit(excess)
    if fit is None:
        return excess
    # At least an exponential tail: a negative shape bounds the excesses (sigma / -xi), and on the
    # few hundred in-sample scores a device of a sampled fleet gives, that bound cut real ones
    # (LOW's false alarms on the sampled fleet 218 -> 231 per 1,000 device-days).
    limit = _pareto_quantile(0.0, max(fit[0], 0.0), fit[1], len(excess) / _OUTLIER)
    kept: npt.NDArray[np.float64] = excess[excess <= limit]
    return kept


def _quantile_fit(excess: npt.NDArray[np.float64]) -> tuple[float, float] | None:
    """Shape and scale of a generalised Pareto from the median and the ``_UPPER`` quantile of the
    excesses; None when they cannot tell (ties at the threshold).

    The method of moments reads the shape from the excesses' variance, and a first model's training window with
    anomalies in it (200 one-datapoint spikes among 8M datapoints, 2.5e-5 of them: more than HIGH's
    2e-6) puts a dozen excesses of 5-10 spreads among 2,000 of about 0.3: the variance triples, the
    shape hits its clamp of 0.5 and HIGH's threshold doubled (4.8 -> 9.6 robust standard deviations),
    blind to 5-sigma spikes. Two quantiles of the excesses are not moved by a contamination of fewer
    than 1 - ``_UPPER`` of them (a breakdown point of 5 %): for excesses of a generalised Pareto,
    q(p) = sigma / xi ((1 - p)^-xi - 1), so q(_UPPER) / q(0.5) is a monotone function of xi alone.
    """
    median, upper = (float(x) for x in np.quantile(excess, [0.5, _UPPER]))
    if median <= 0 or upper <= median:
        return None
    target = upper / median
    low, high = -0.5, 0.5  # the same clamp as the moments' shape
    if _quantile_ratio(low) >= target:
        high = low
    elif _quantile_ratio(high) <= target:
        low = high
    for _ in range(60):
        if high - low < 1e-9:
            break
        middle = (low + high) / 2
        if _quantile_ratio(middle) < target:
            low = middle
        else:
            high = middle
    xi = (low + high) / 2
    sigma = median * (xi / (2.0 ** xi - 1) if abs(xi) > 1e-9 else 1 / math.log(2))
    return xi, sigma


def _quantile_ratio(xi: float) -> float:
    """q(_UPPER) / q(0.5) of a generalised Pareto's excesses with shape ``xi``."""
    tail = 1 - _UPPER
    if abs(xi) < 1e-9:
        return math.log(tail) / math.log(0.5)
    return float((tail ** -xi - 1) / (2.0 ** xi - 1))
