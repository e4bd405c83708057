"""What a model is trained on: one behavior's datapoints over the trailing period, as columns.

Columnar numpy arrays because a profile over 100k devices holds 400M datapoints in 14 days at one
report per 5 minutes: a list of objects would not fit, and the training passes are vectorised.
``device`` holds codes into ``devices`` (as the store's columnar segments do), ``time`` epoch
seconds on the service's clock, ``value`` the metric's value per datapoint as the evaluator sees it
(for delta metrics the value per report).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class TrainingData:
    device: npt.NDArray[np.int32]
    devices: list[str]
    time: npt.NDArray[np.float64]
    value: npt.NDArray[np.floating]  # float64 as stored; float32 is accepted to halve a benchmark's memory

    def __post_init__(self) -> None:
        n = len(self.device)
        if len(self.time) != n or len(self.value) != n:
            raise ValueError(f"columns differ in length: device {n}, time {len(self.time)}, value {len(self.value)}")
        if self.device.dtype != np.int32:
            raise ValueError(f"device codes must be int32, not {self.device.dtype}")
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("device names must be distinct")
        if n and (int(self.device.min()) < 0 or int(self.device.max()) >= len(self.devices)):
            raise ValueError("a device code is outside devices")

    def __len__(self) -> int:
        return len(self.device)

    @property
    def window(self) -> tuple[float, float]:
        """(first, last) datapoint time; (0, 0) without datapoints."""
        if not len(self.time):
            return (0.0, 0.0)
        return (float(self.time.min()), float(self.time.max()))
