"""Fused RMSNorm/LayerNorm (+ residual) in interpret mode against the XLA reference."""
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

from jaxlab.errors import ConfigError
from jaxlab.kernels import last_path
from jaxlab.kernels.fused_norm import fused_norm
from jaxlab.kernels.fused_norm.reference import fused_norm_reference
from tests.kernels.helpers import COMPILED, KERNEL_IMPL, assert_matches_reference

STRATEGIES = dict(
    rows=st.integers(1, 40),
    d=st.sampled_from([16, 64, 128] if COMPILED else [8, 24, 64]),
    kind=st.sampled_from(["rms", "layer"]),
    residual=st.booleans(),
    bias=st.booleans(),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]))


def check_matches_reference(rows, d, kind, residual, bias, dtype):
    keys = jax.random.split(jax.random.key(rows * 100 + d), 4)
    x = (3 * jax.random.normal(keys[0], (rows, d)) + 1).astype(dtype)
    r = jax.random.normal(keys[1], (rows, d)).astype(dtype) if residual else None
    w = 1 + 0.1 * jax.random.normal(keys[2], (d,))
    b = 0.1 * jax.random.normal(keys[3], (d,)) if bias else None
    kernel = lambda x, w, b, r: fused_norm(x, w, b, r, kind=kind, impl=KERNEL_IMPL)
    reference = lambda x, w, b, r: fused_norm_reference(x, w, b, r, kind=kind)
    assert_matches_reference(kernel, reference, (x, w, b, r), dtype)
    assert last_path("fused_norm") == KERNEL_IMPL


@settings(max_examples=5, deadline=None, derandomize=True)
@given(**STRATEGIES)
def test_matches_reference(rows, d, kind, residual, bias, dtype):
    check_matches_reference(rows, d, kind, residual, bias, dtype)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, derandomize=True)
@given(**STRATEGIES)
def test_matches_reference_wide(rows, d, kind, residual, bias, dtype):
    check_matches_reference(rows, d, kind, residual, bias, dtype)


@pytest.mark.skipif(COMPILED, reason="checks the CPU paths")
def test_leading_dims_and_paths():
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 16))
    w = jnp.ones(16)
    y = fused_norm(x, w, kind="layer", impl="interpret")
    assert y.shape == x.shape
    assert float(jnp.abs(y.mean(-1)).max()) < 1e-5
    fused_norm(x, w, impl="auto")
    assert last_path("fused_norm") == "xla"  # CPU: auto takes the reference
    with pytest.raises(ConfigError, match="Pallas needs a GPU or TPU"):
        fused_norm(x, w, impl="pallas")
    with pytest.raises(ConfigError, match="kernel implementation 'fast' is unknown"):
        fused_norm(x, w, impl="fast")
