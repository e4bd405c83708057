"""The spread of counts, a floor under it and its per-slot multiplier: small, zero-heavy integer
metrics (messages sent, connection attempts, authorization failures per window) have a spread
that their median and MAD miss.

A metric that is 0 most of the time has a MAD of 0 and a median of 0, so its robust spread falls
to ``min_scale`` and a single 1 scores 14 robust standard deviations; the thresholds calibrated on
such scores then reach 12-150 standard deviations and a HIGH band of hundreds of messages. A count
cannot vary less than a Poisson count of the same level does, so its spread on the model's log
scale is at least a Poisson's there: by the delta method, log(1 + X) with X ~ Poisson(m) has a
standard deviation of about sqrt(m) / (1 + m). At a median of 0 the mean can still be up to
log 2, so ``m + 1/4`` keeps the floor at 0.5 there instead of 0. The floor fades as counts grow
(0.1 at 100, 0.005 at 40,000 bytes), where ``min_scale`` rules.

The floor is never above the values' plain standard deviation: a count that does not vary (three
listening ports for two weeks) is not Poisson, and a fourth port must still stand out.

A small count's per-slot multiplier of the spread (``slot_shape``) is a mean, not a median: the
standardised residuals of a small count take a few distinct values, and where most of a slot's
datapoints sit on the fit (a fleet sending 1 message in most windows, fitted at 1) their median is
~0 and the slot's band shrank to the multiplier's floor of a quarter. Found with the README's recipe
(a 168 s model week, windows of 0.083 s): a device sending nothing in a third of its windows had a
LOW band of [1, 2] messages in such slots and its 0s scored 7.9-8.7 robust standard deviations,
flapping as the slots changed (offline, 6.0-7.5 in ``test_ml_small_sets``); on a fleet sending 1
in three windows of four, a tenth of the slots were at the floor and the thresholds calibrated on
those scores rose from 3.3 to 9-13 standard deviations at LOW.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from iotdefender.engine.ml.seasonal import Fallbacks

_SHAPE_CAP = 4.0  # standardised residuals are capped here for the slot multiplier: an anomaly in training does not widen its slot
_SHAPE_LIMITS = (0.25, 4.0)  # as the median-based multiplier of continuous metrics
# Up to this level (the fleet's median count) neighbouring whole numbers are at least 1 % apart on
# the log scale and a spread holds a few of them; above it (bytes, packets) residuals are as good
# as continuous and keep the median: bench/ml_detect.py's fleet with its bytes rounded to whole
# numbers gives the same rows as before (with the mean: HIGH's recall 0.754 -> 0.747, and 7.9 ->
# 9.3 false alarms per 1,000 device-days at HIGH when trained with anomalies).
_SMALL_COUNT = 100.0


def is_count(values: npt.NDArray[np.floating]) -> bool:
    """Whether every value is a non-negative integer (a count); an empty array is not."""
    return bool(len(values)) and bool(np.all(values >= 0)) and bool(np.all(values == np.floor(values)))


def poisson_log_spread(center: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """The spread on the log scale of a count whose log-scale center is ``center``."""
    m = np.expm1(np.maximum(np.asarray(center, dtype=np.float64), 0.0))
    result: npt.NDArray[np.float64] = np.sqrt(m + 0.25) / (1.0 + m)
    return result


def floor(spread: npt.NDArray[np.floating], center: npt.NDArray[np.floating] | float,
          plain_std: npt.NDArray[np.floating] | float) -> npt.NDArray[np.float64]:
    """``spread`` raised to a Poisson count's at ``center``, but not above ``plain_std`` (all log scale)."""
    bound = np.minimum(poisson_log_spread(np.asarray(center)), plain_std)
    result: npt.NDArray[np.float64] = np.maximum(np.asarray(spread, dtype=np.float64), bound)
    return result


def poisson_scores(center: npt.NDArray[np.floating], exceedance: list[float]) -> list[float]:
    """Per share, the score on the model's log scale above which a Poisson count at the level of
    ``center`` (the fleet's median, log scale) lies with at most that share: how far above its
    centre the lightest tail a count can have reaches (``training``: a small count's floor, where
    the normal distribution's is too far).

    log(1 + X) of a Poisson count has a far lighter upper tail than a normal's: at a level of 2,
    one window in a million reaches 11, 2.8 Poisson spreads above, not the normal's 4.75 (which put
    HIGH's edge at 31 and LOW's, where a thousandth should reach, at 14 instead of 8). The score is
    read halfway between the last count within the share and the first beyond it, so a count at
    the edge is on one side whatever the rounding. A median M is that of Poisson means up to
    M + log 2 (a median of 0: up to log 2, where a 1 is every other window's); the highest of them
    reaches furthest, and is the one taken."""
    level = max(float(np.median(center)), 0.0)
    mean = float(np.expm1(level)) + math.log(2)
    spread = float(poisson_log_spread(np.asarray(level)))
    # P(X >= k) from the top of the pmf, in logs: no underflow at shares of 1e-6 and means to 100.
    top = int(mean + 40 * math.sqrt(mean + 1) + 40)
    k = np.arange(top + 1, dtype=np.float64)
    log_pmf = k * math.log(mean) - mean - np.array([math.lgamma(x + 1) for x in k])
    at_least = np.cumsum(np.exp(log_pmf)[::-1])[::-1]  # at_least[k] = P(X >= k)
    result = []
    for share in exceedance:
        first_beyond = int(np.argmax(at_least <= share))  # the first count reached with at most the share
        result.append((math.log1p(first_beyond - 0.5) - level) / spread)
    return result


def varies(center: npt.NDArray[np.floating], fleet_std: float) -> bool:
    """Whether a count's residuals over the fleet (``fleet_std``, log scale) vary at least half as
    much as a Poisson count's at its level: only then is a Poisson's tail the lightest it can
    have (``poisson_scores``). A count that does not vary has no tail to read (three listening
    ports for two weeks), and its thresholds keep their floors: a fourth port is MEDIUM, as the
    floors mean a change never seen in training to be."""
    return fleet_std >= 0.5 * float(poisson_log_spread(np.asarray(max(float(np.median(center)), 0.0))))


def small(center: npt.NDArray[np.floating]) -> bool:
    """Whether a count whose fleet centre per slot (log scale) is ``center`` is small enough for its
    residuals to sit on a few distinct values (``slot_shape`` then, not a median)."""
    return bool(np.expm1(float(np.median(center))) <= _SMALL_COUNT)


def slot_shape(fallbacks: Fallbacks, slot: npt.NDArray[np.int16],
               standardised: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Per slot of the week, how much wider or narrower a count's residuals are there than over the
    whole period: the slot's mean of the (capped) standardised residuals over the period's, which
    moves smoothly with the mix of values in a slot where a median jumps between them.

    A slot's mean is of a few dozen datapoints of a few distinct values, and the chance mix of a
    slot moved it by a fifth either way (0.46-1.5 over a week of slots of ten devices sending 1
    in three windows of four, 0 otherwise): each slot's deviation from 1 is shrunk by the share
    of the slots' variance that is not that sampling noise (a posterior mean), so a fleet without
    quieter or busier slots gets a multiplier of about 1, and one with them keeps them.
    """
    capped = np.minimum(np.asarray(standardised, dtype=np.float64), _SHAPE_CAP)
    overall = float(capped.mean()) if len(capped) else 0.0
    if not overall > 0:
        return np.ones(fallbacks.slots)
    means, counts = fallbacks.mean(slot, capped)
    raw = means / overall
    noise = float(capped.var()) / overall ** 2 / np.maximum(counts, 1)  # per slot: the variance of its mean
    signal = max(float(np.mean((raw - 1.0) ** 2)) - float(np.mean(noise)), 0.0)
    result: npt.NDArray[np.float64] = np.clip(1.0 + (raw - 1.0) * signal / (signal + noise), *_SHAPE_LIMITS)
    return result
