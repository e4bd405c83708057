"""ML Detect's confidence levels, and which one a behavior's criteria ask for.

AWS names three (``mlDetectionConfig.confidenceLevel``): LOW is the most sensitive (the narrowest
normal band, the most alarms), HIGH the least. A model answers with the *most* confident level a
datapoint reaches, so one model serves behaviors at every level: a behavior at MEDIUM alarms when
the answer is MEDIUM or HIGH.
"""

from __future__ import annotations

import enum


class ConfidenceLevel(enum.Enum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"

    @property
    def rank(self) -> int:
        """0 for LOW, 2 for HIGH: a judged level violates a behavior's level iff its rank is at least as high."""
        return _RANK[self]

    def reached_by(self, judged: ConfidenceLevel | None) -> bool:
        """Whether a datapoint judged ``judged`` violates a behavior configured at this level."""
        return judged is not None and judged.rank >= self.rank


LEVELS: tuple[ConfidenceLevel, ...] = (ConfidenceLevel.LOW, ConfidenceLevel.MEDIUM, ConfidenceLevel.HIGH)
_RANK = {level: i for i, level in enumerate(LEVELS)}
