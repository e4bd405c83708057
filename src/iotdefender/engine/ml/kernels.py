"""refit.py's pass over every datapoint as two compiled loops (numba), one read of each datapoint each.

The same arithmetic as the numpy version it replaced (bench/README.md, "Training time at 100k
devices, compiled"): float32 where that kept float32 (log values, residuals, the line between slot
centres), float64 sums. What differs is only the order of the sums (sequential here, numpy's
reductions pairwise): the model moves by ~1e-7 relative, not beyond tests/unit/test_ml_pass_reference.py's and
test_ml_pinned_model.py's tolerances. At 100k devices x 14 days the numpy pass made ~40 passes over
403M datapoints (its arrays, in cache-sized chunks, 8.6 s of CPU in a profile); these loops read
each datapoint's value and time once, then its cached float32 columns once.

Compiled on the first call of a process and cached on disk (``cache=True``: numba's cache next to
this file, or in the user's cache directory when that is not writable); the first call of a fresh
install compiles both loops (a few seconds, stated in bench/README.md), a later process loads them.
``nogil``: the trainer runs on a thread of the service beside its event loop, as numpy's loops let
go of the GIL.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

_F = TypeVar("_F", bound=Callable[..., None])


def _load_llvm_without_the_gil() -> None:
    """Map llvmlite's LLVM library (~160 MB) into the process with the GIL let go.

    ``import numba`` loads it with ``ctypes.CDLL``, whose ``dlopen`` runs with the GIL held: the
    mapping, its relocations, LLVM's static constructors and, when the file is not in the page
    cache, the disk reads of their page faults stop every other thread of the process, the
    service's event loop among them (two services beside each other, at their first model build:
    1.7 and 2.1 s without a report read or answered). ``dlopen`` called through ctypes as a foreign
    function runs without the GIL; the import's ``CDLL`` then finds the library loaded
    (bench/ml_first_import.py). Only an optimisation: any failure leaves the load to the import."""
    try:
        spec = importlib.util.find_spec("llvmlite")
        if spec is None or not spec.submodule_search_locations:
            return
        binding = Path(next(iter(spec.submodule_search_locations))) / "binding"
        libraries = sorted(binding.glob("libllvmlite*.so*"))
        if not libraries:
            return
        libc = ctypes.CDLL(None)
        libc.dlopen.restype = ctypes.c_void_p
        libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
        libc.dlopen(os.fsencode(libraries[0]), os.RTLD_NOW)  # kept open: the import's CDLL takes it
    except Exception:  # noqa: BLE001 - the import loads it as before
        return


def _compiled(function: _F) -> _F:
    """``function`` compiled by numba on its first call. numba (with LLVM: ~130 MB of memory, 0.2 s)
    is imported then, not with this module: a process that judges datapoints and never trains (a
    detection worker) does not load it."""
    compiled: Callable[..., None] | None = None

    @functools.wraps(function)
    def call(*args: Any) -> None:
        nonlocal compiled
        if compiled is None:
            _load_llvm_without_the_gil()
            import numba

            compiled = cast(Callable[..., None], numba.njit(cache=True, nogil=True, error_model="numpy")(function))
        compiled(*args)
    return cast(_F, call)


@_compiled
def residual_sums(y: npt.NDArray[np.float32], time: npt.NDArray[np.float64], lengths: npt.NDArray[np.int64],
                  table: npt.NDArray[np.float32], limit: npt.NDArray[np.float32], scale: float, offset: float,
                  first: npt.NDArray[np.int32], fraction: npt.NDArray[np.float32], residual: npt.NDArray[np.float32],
                  sums: npt.NDArray[np.float64], counts: npt.NDArray[np.float64]) -> None:
    """Steps 1-2 of refit.py over a run of whole devices (``lengths`` datapoints each, device ``j``'s
    row ``table[j]`` its fit per slot centre), given their log values ``y`` (tails.log32: numpy's
    float32 log1p runs in SIMD, 0.7 ns a value here, a compiled loop's 9 ns): each datapoint's
    slot ``first`` and ``fraction`` (clock.first_of), its ``residual`` from the line
    between its device's slot centres (refit.along), and per device and nearest slot centre the sums
    and counts of the residuals within ``limit`` of the device (added to ``sums``, ``counts``).

    ``scale`` is 1 / slot seconds, ``offset`` origin / slot seconds + 0.5."""
    slots = table.shape[1]
    i = 0
    half = np.float32(0.5)
    week = np.int64(0)  # the slot count at the start of the week of the device's last datapoint
    for j in range(len(lengths)):
        bound = limit[j]
        for _ in range(lengths[j]):
            position = time[i] * scale
            position -= offset
            whole = math.floor(position)
            f = np.float32(position - whole)
            # The slot of the week: from the start of the last datapoint's week (a device's
            # datapoints come in time order, so it is that week or the next), else the remainder of
            # a division (~2.5 ns a datapoint, half of this loop's time when it was done for each).
            count = np.int64(whole)
            s = count - week
            if s >= slots and s < 2 * slots:
                s -= slots
                week += slots
            elif s < 0 or s >= slots:
                s = np.int64(whole - slots * math.floor(whole / slots))
                week = count - s
            nxt = s + 1 if s + 1 < slots else 0
            low = table[j, s]
            r = y[i] - (low + f * (table[j, nxt] - low))
            first[i] = s
            fraction[i] = f
            residual[i] = r
            if abs(r) <= bound:
                cell = nxt if f >= half else s
                sums[j, cell] += r
                counts[j, cell] += 1.0
            i += 1


@_compiled
def fit_moments(y: npt.NDArray[np.float32], first: npt.NDArray[np.int32], fraction: npt.NDArray[np.float32],
                residual: npt.NDArray[np.float32], lengths: npt.NDArray[np.int64], moved: npt.NDArray[np.float32],
                limit: npt.NDArray[np.float32], start_std: npt.NDArray[np.float64],
                fallback: npt.NDArray[np.float32], left_out: npt.NDArray[np.bool_], correction: float,
                cap: float, beyond_spreads: float, shift: npt.NDArray[np.float64], std: npt.NDArray[np.float64],
                m2: npt.NDArray[np.float64], m4: npt.NDArray[np.float64], count: npt.NDArray[np.int64],
                beyond: npt.NDArray[np.int64], outside: npt.NDArray[np.int64]) -> None:
    """Steps 3-5 of refit.py over the same run, once the correction ``moved`` [devices, slots] of
    each device's fit is known: per device its level's ``shift`` and ``std`` (one round of clipped
    moments from 0 and ``start_std``, ``limit`` = float32(clip x ``start_std``); robust.py), else
    ``fallback`` for a std that is not finite; the sums of the squares and fourth powers of its
    successive differences (tails.run_moments: times 1 / (sqrt(2) x std), capped at ``cap``,
    without those touching a ``left_out`` datapoint) and how many; how many datapoints not left
    out lie over ``beyond_spreads`` stds off the new fit, and how many are not left out.
    ``residual`` is updated in place (less ``moved``)."""
    slots = moved.shape[1]
    cap32 = np.float32(cap)
    root2 = math.sqrt(2.0)
    begin = 0
    for j in range(len(lengths)):
        end = begin + lengths[j]
        bound = limit[j]
        n = 0
        total = 0.0
        squares = 0.0
        for i in range(begin, end):
            s = first[i]
            nxt = s + 1 if s + 1 < slots else 0
            low = moved[j, s]
            r = residual[i] - (low + fraction[i] * (moved[j, nxt] - low))
            residual[i] = r
            if abs(r) <= bound:
                n += 1
                total += r
                squares += r * r
        location = 0.0
        deviation = start_std[j]
        if n > 1:
            mean = total / n
            location = mean
            deviation = math.sqrt(max(squares / n - mean * mean, 0.0)) / correction
        if not math.isfinite(location):
            location = 0.0
        if not math.isfinite(deviation):
            deviation = np.float64(fallback[j])
        shift[j] = location
        std[j] = deviation
        inverse = np.float32(1.0 / (root2 * max(deviation, 1e-9)))
        far = np.float32(beyond_spreads * deviation)
        level = np.float32(location)
        sum2 = 0.0
        sum4 = 0.0
        differences = 0
        far_off = 0
        kept = 0
        for i in range(begin, end):
            if not left_out[i]:
                kept += 1
                if abs(residual[i] - level) > far:
                    far_off += 1
                if i > begin and not left_out[i - 1]:
                    d = min(abs((y[i] - y[i - 1]) * inverse), cap32)
                    d *= d
                    sum2 += d
                    sum4 += d * d
                    differences += 1
        m2[j] = sum2
        m4[j] = sum4
        count[j] = differences
        beyond[j] = far_off
        outside[j] = kept
        begin = end


@_compiled
def slot_sums(lengths: npt.NDArray[np.int64], slot: npt.NDArray[np.int16], residual: npt.NDArray[np.float32],
              keep: npt.NDArray[np.bool_], sums: npt.NDArray[np.float64], counts: npt.NDArray[np.float64]) -> None:
    """seasonal._tables' per device and slot of the week sums and counts of the ``keep`` residuals
    (a run of whole devices, ``lengths`` datapoints each; added to ``sums``, ``counts`` [devices,
    slots]), in the order ``np.bincount`` sums them: the same bytes, without its cells, mask and
    float64 copy (~100 ns a datapoint on a busy machine, 12M datapoints at 100k devices)."""
    i = 0
    for j in range(len(lengths)):
        for _ in range(lengths[j]):
            if keep[i]:
                s = slot[i]
                sums[j, s] += residual[i]
                counts[j, s] += 1.0
            i += 1


@_compiled
def between_all(times: npt.NDArray[np.float64], origin: float, slot_seconds: float, slots: int,
                first: npt.NDArray[np.int16], second: npt.NDArray[np.int16], fraction: npt.NDArray[np.float32]) -> None:
    """clock.between_all's arithmetic, datapoint by datapoint (its numpy version made ten passes)."""
    for i in range(len(times)):
        position = (times[i] - origin) / slot_seconds - 0.5
        floor = math.floor(position)
        fraction[i] = np.float32(position - floor)
        floor -= slots * math.floor(floor / slots)
        s = np.int16(floor)
        first[i] = s
        second[i] = s + 1 if s + 1 < slots else 0


@_compiled
def weighted_rows(weights: npt.NDArray[np.float32], rows: npt.NDArray[np.float32],
                  out: npt.NDArray[np.float32]) -> None:
    """``out[d] = sum over s of weights[d, s] * rows[s]``: seasonal.NormalEquations' Gram matrices
    (a device's counts per slot times the slots' basis products), in float32 and in the order
    numpy's einsum summed them (the same bytes here), in half its time and without BLAS's threads
    (seasonal.py). Summed in a row of its own, which the compiler keeps in registers (into ``out``
    directly it took 6 times as long: it cannot tell that ``out`` and ``rows`` do not overlap)."""
    total = np.zeros(rows.shape[1], dtype=np.float32)
    for d in range(weights.shape[0]):
        total[:] = 0
        for s in range(weights.shape[1]):
            w = weights[d, s]
            for k in range(rows.shape[1]):
                total[k] += w * rows[s, k]
        out[d, :] = total
