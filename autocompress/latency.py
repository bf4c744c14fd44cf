"""Latency measurement that can be trusted on a noisy, shared machine.

Times the deployable form of a model in blocks of calls, reports wall time beside
thread CPU time (so contention is visible), and, given a reference, times both
interleaved so their ratio survives drift in absolute speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import gc
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LatencyResult", "LatencySettings", "measure_latency"]

_M_TRIM_THRESHOLD = -1  # glibc malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# 4 GiB was the measured fix, but mallopt takes a C int: 2 GiB - 1 is the most it accepts.
_TRIM_THRESHOLD_BYTES = min(4 * 1024**3, 2**31 - 1)
_MAX_CALLS_PER_BLOCK = 1_000_000
_CONTENTION_RATIO = 1.1
_allocator_configured: bool | None = None


@dataclass(frozen=True)
class LatencySettings:
    """How a latency measurement is run.

    Attributes:
        warmup_calls: Untimed calls after the first (separately timed) call.
        min_block_seconds: Calls per block are chosen so one block lasts at
            least this long.
        min_blocks: Blocks timed before the stability test may stop the run.
        max_blocks: Hard cap on timed blocks; reaching it leaves the result
            marked unstable when the spread is still above ``max_cv``.
        max_cv: Stop once the coefficient of variation of the block per-call
            times is at or below this.
        threads: ``torch.set_num_threads`` value during the measurement; the
            previous value is restored afterwards.
    """

    warmup_calls: int = 10
    min_block_seconds: float = 0.02
    min_blocks: int = 5
    max_blocks: int = 40
    max_cv: float = 0.05
    threads: int = 1

    def __post_init__(self) -> None:
        lows = {"warmup_calls": 0, "min_blocks": 2, "max_blocks": 2, "threads": 1}
        for name, low in lows.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("min_block_seconds", "max_cv"):
            value = getattr(self, name)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not is_number or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.max_blocks < self.min_blocks:
            raise ValueError(
                f"max_blocks ({self.max_blocks}) must be >= min_blocks ({self.min_blocks})"
            )


@dataclass(frozen=True)
class LatencyResult:
    """Outcome of :func:`measure_latency`; all times are per call, in milliseconds.

    Attributes:
        median_ms: Median over blocks of the wall-clock per-call time.
        p90_ms: 90th percentile over blocks of the wall-clock per-call time.
        cv: Coefficient of variation of the block per-call times (the larger
            of candidate and reference when a reference was timed).
        n_blocks: Blocks timed (per callable).
        calls_per_block: Calls in every block (same for candidate and reference).
        stable: True when ``cv <= max_cv`` was reached within ``max_blocks``.
        first_call_ms: Wall time of the very first call (compile / allocation).
        cpu_ms: Median over blocks of the calling thread's CPU time per call.
        wall_cpu_ratio: ``median_ms / cpu_ms``; inf when no CPU time was seen.
        contended: True when measured on one thread without ``synchronize``
            and ``wall_cpu_ratio > 1.1``: the thread was waiting for a CPU.
        reference_median_ms: Median per-call time of the interleaved reference.
        ratio_to_reference: ``median_ms / reference_median_ms`` from the same run.
    """

    median_ms: float
    p90_ms: float
    cv: float
    n_blocks: int
    calls_per_block: int
    stable: bool
    first_call_ms: float
    cpu_ms: float
    wall_cpu_ratio: float
    contended: bool
    reference_median_ms: float | None = None
    ratio_to_reference: float | None = None

    def __post_init__(self) -> None:
        if self.n_blocks < 1 or self.calls_per_block < 1:
            raise ValueError("n_blocks and calls_per_block must be >= 1")
        if min(self.median_ms, self.p90_ms, self.cv, self.first_call_ms, self.cpu_ms) < 0:
            raise ValueError("times and cv must be >= 0")
        if (self.reference_median_ms is None) != (self.ratio_to_reference is None):
            raise ValueError("reference_median_ms and ratio_to_reference must be given together")

    def to_dict(self) -> dict[str, float | int | bool | None]:
        """Returns the fields as a flat, JSON-friendly dictionary."""
        return dataclasses.asdict(self)


def _configure_allocator() -> bool:
    """Stops glibc from returning memory to the OS after every forward pass.

    Raises the mmap and trim thresholds once per process via ``mallopt``; on
    anything but glibc Linux, or if the call fails, it is silently skipped.

    Returns:
        True when the thresholds are in effect.
    """
    global _allocator_configured
    if _allocator_configured is None:
        _allocator_configured = False
        try:
            if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.mallopt.restype = ctypes.c_int
                ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1
                ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1
                _allocator_configured = ok_mmap and ok_trim
        except (OSError, AttributeError, ValueError):
            pass
    return _allocator_configured


def _time_block(
    call: Callable[[], object], n: int, synchronize: Callable[[], None] | None
) -> tuple[float, float]:
    """Times ``n`` calls; returns (wall seconds, thread CPU seconds) per call."""
    if synchronize is not None:
        synchronize()
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for _ in range(n):
        call()
    if synchronize is not None:
        synchronize()
    wall1, cpu1 = time.perf_counter(), time.thread_time()
    return (wall1 - wall0) / n, (cpu1 - cpu0) / n


def _calibrate(
    calls: list[Callable[[], object]], min_seconds: float, synchronize: Callable[[], None] | None
) -> int:
    """Finds the calls per block for which each callable's block lasts ``min_seconds``."""
    n = 1
    while n < _MAX_CALLS_PER_BLOCK:
        elapsed = min(_time_block(c, n, synchronize)[0] for c in calls) * n
        if elapsed >= min_seconds:
            break
        grow = 100.0 if elapsed <= 0 else min(100.0, 1.2 * min_seconds / elapsed)
        n = min(_MAX_CALLS_PER_BLOCK, max(n + 1, math.ceil(n * grow)))
    return n


def _cv(values: list[float]) -> float:
    """Sample coefficient of variation (std with ddof=1 over mean)."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    return float(arr.std(ddof=1) / mean) if mean > 0 else math.inf


def measure_latency(
    call: Callable[[], object],
    settings: LatencySettings = LatencySettings(),
    reference: Callable[[], object] | None = None,
    synchronize: Callable[[], None] | None = None,
) -> LatencyResult:
    """Warm up, then time blocks of calls until the per-call median is stable.

    Stops once the coefficient of variation of the block per-call times is at
    most ``max_cv`` after at least ``min_blocks`` blocks, or when ``max_blocks``
    is reached (then ``stable`` is False). When ``reference`` is given (e.g.
    the uncompressed baseline's deployed form) it is timed INTERLEAVED with the
    candidate, block by block (A B A B ...), with the same calls per block, and
    the ratio of the medians is reported: the figure a search should trust most
    because absolute times drift. Both callables must then be stable to stop.
    Runs under ``torch.inference_mode()`` and ``settings.threads`` threads, with
    the garbage collector paused; both are restored afterwards, also on error.

    Args:
        call: The candidate, called with no arguments.
        settings: Warm-up, block and stopping parameters.
        reference: Optional baseline timed interleaved with ``call``.
        synchronize: Called before each clock read when given (e.g.
            ``torch.cuda.synchronize``).

    Returns:
        The measurement, with ``first_call_ms`` kept apart from the median.
    """
    _configure_allocator()
    calls = [call] if reference is None else [call, reference]
    old_threads = torch.get_num_threads()
    gc_was_enabled = gc.isenabled()
    try:
        torch.set_num_threads(settings.threads)
        with torch.inference_mode():
            first_call_s = _time_block(call, 1, synchronize)[0]
            for c in calls[1:]:
                c()
            for _ in range(settings.warmup_calls):
                for c in calls:
                    c()
            n = _calibrate(calls, settings.min_block_seconds, synchronize)
            gc.collect()
            gc.disable()
            walls: list[list[float]] = [[] for _ in calls]
            cpus: list[list[float]] = [[] for _ in calls]
            cv = math.inf
            while len(walls[0]) < settings.max_blocks:
                for i, c in enumerate(calls):
                    wall, cpu = _time_block(c, n, synchronize)
                    walls[i].append(wall)
                    cpus[i].append(cpu)
                if len(walls[0]) >= settings.min_blocks:
                    cv = max(_cv(w) for w in walls)
                    if cv <= settings.max_cv:
                        break
    finally:
        if gc_was_enabled:
            gc.enable()
        torch.set_num_threads(old_threads)

    median_s = float(np.median(walls[0]))
    cpu_s = float(np.median(cpus[0]))
    ratio = median_s / cpu_s if cpu_s > 0 else math.inf
    ref_ms = ref_ratio = None
    if reference is not None:
        ref_ms = float(np.median(walls[1])) * 1e3
        ref_ratio = median_s * 1e3 / ref_ms if ref_ms > 0 else math.inf
    return LatencyResult(
        median_ms=median_s * 1e3,
        p90_ms=float(np.percentile(walls[0], 90)) * 1e3,
        cv=cv,
        n_blocks=len(walls[0]),
        calls_per_block=n,
        stable=cv <= settings.max_cv,
        first_call_ms=first_call_s * 1e3,
        cpu_ms=cpu_s * 1e3,
        wall_cpu_ratio=ratio,
        contended=settings.threads == 1 and synchronize is None and ratio > _CONTENTION_RATIO,
        reference_median_ms=ref_ms,
        ratio_to_reference=ref_ratio,
    )
