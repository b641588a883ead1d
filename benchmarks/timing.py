"""Interleaved timing: every candidate runs once per round, so machine noise hits all alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int = 10,
                warmup: int = 2, calls: int = 1) -> dict[str, float]:
    """Median seconds per call of each zero-argument callable (compiled on the warmup calls).

    Each sample times `calls` calls in a row and waits only for the last, so that on an
    accelerator the host's dispatch overlaps the device's work and short kernels are timed
    by their device time, not by the round trip."""
    for fn in candidates.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(calls - 1):
                fn()
            jax.block_until_ready(fn())
            samples[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(times) for name, times in samples.items()}
