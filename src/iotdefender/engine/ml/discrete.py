"""A floor on the spread of counts: small, zero-heavy integer metrics (messages sent, connection
attempts, authorization failures per window) have a spread that their median and MAD miss.

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
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


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
