"""Importing jaxlab makes XLA:CPU reuse its per-call temporary buffer instead of faulting fresh
pages in every call (jaxlab/host_memory.py). Each case runs in a fresh process, since the malloc
policy has to be set before JAX's CPU backend starts."""
import os
import subprocess
import sys

import pytest

PROBE = """
import resource
import statistics
import jaxlab  # noqa: F401
import jax, jax.numpy as jnp
jax.config.update("jax_platforms", "cpu")

@jax.jit
def f(x, w):  # a 32 MiB product that the second product reads: a temporary buffer
    return jnp.sum(jnp.tanh(x @ w).T @ x)

x, w = jnp.ones((8192, 256)), jnp.ones((256, 1024)) / 256
temp_pages = f.lower(x, w).compile().memory_analysis().temp_size_in_bytes // 4096
assert temp_pages > 8000, temp_pages


def faults_in_one_call():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


for _ in range(5):
    f(x, w).block_until_ready()
# The median call: with the policy, the heap still grows now and then (a call or two in twenty
# fault ~1.5x the buffer, even after the first few), which made a 4-call mean flaky.
faults = statistics.median(faults_in_one_call() for _ in range(15))
print(faults / temp_pages)
"""


def faults_per_temp_page(keep: str) -> float:
    env = dict(os.environ, JAXLAB_KEEP_HOST_MEMORY=keep, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="the policy is glibc's mallopt")
def test_calls_stop_faulting_in_their_temporary_buffer():
    # Without the policy every call touches fresh pages for its whole temporary buffer ...
    assert faults_per_temp_page("0") > 0.5
    # ... with it, the freed buffer is reused and the calls fault (almost) nothing.
    assert faults_per_temp_page("1") < 0.1
