"""Keep freed host memory in the process, so XLA:CPU's per-call buffers stop costing page faults.

XLA:CPU allocates each call's temporary buffer afresh (387 MiB for the default GPT's train
step) from one of its worker threads. glibc serves a request that large with a fresh `mmap` and
returns it with `munmap` on free, so every step first-touches every page again: ~99k page
faults per step, about a third of the step's time on a 2-core machine (benchmarks/RESULTS.md).
With one malloc arena, no `mmap` for large blocks and no trimming, the freed block stays in the
heap and the next call reuses it. The cost: the process holds its peak heap until it exits.

Applied when jaxlab is imported, on Linux with glibc, unless JAXLAB_KEEP_HOST_MEMORY=0. It
works fully only if it runs before JAX starts its CPU backend (whose threads pick their malloc
arena on their first allocation); jaxlab's own entry points import it first.
"""
from __future__ import annotations

import ctypes
import os
import platform

# mallopt parameters (glibc malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD_BYTES = 2 ** 31 - 1  # mallopt's largest: keep up to 2 GiB of free heap top


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep and reuse freed memory; True if it was applied."""
    if os.environ.get("JAXLAB_KEEP_HOST_MEMORY", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # One arena: XLA's worker threads then allocate from the main heap, where the two settings
    # below apply (a thread arena serves big requests by mmap whatever they say).
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0),
                (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return all(mallopt(name, value) == 1 for name, value in settings)
