"""Interleaved timing: every candidate runs once per round, so machine noise hits all alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int = 10,
                warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each zero-argument callable (compiled on the warmup calls)."""
    for fn in candidates.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}
