"""Fused RMSNorm/LayerNorm (+ residual) in interpret mode against the XLA reference."""
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, strategies as st

from jaxlab.errors import ConfigError
from jaxlab.kernels import dispatch, last_path
from jaxlab.kernels.fused_norm import fused_norm
from jaxlab.kernels.fused_norm.api import default_launches
from jaxlab.kernels.fused_norm.reference import fused_norm_reference
from tests.kernels.helpers import COMPILED, KERNEL_IMPL, assert_matches_reference, examples

STRATEGIES = dict(
    rows=st.integers(1, 40),
    d=st.sampled_from([16, 64, 128] if COMPILED else [8, 24, 64]),
    kind=st.sampled_from(["rms", "layer"]),
    residual=st.booleans(),
    bias=st.booleans(),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]))


def check_matches_reference(rows, d, kind, residual, bias, dtype, **launch):
    keys = jax.random.split(jax.random.key(rows * 100 + d), 4)
    x = (3 * jax.random.normal(keys[0], (rows, d)) + 1).astype(dtype)
    r = jax.random.normal(keys[1], (rows, d)).astype(dtype) if residual else None
    w = 1 + 0.1 * jax.random.normal(keys[2], (d,))
    b = 0.1 * jax.random.normal(keys[3], (d,)) if bias else None
    kernel = lambda x, w, b, r: fused_norm(x, w, b, r, kind=kind, impl=KERNEL_IMPL, **launch)
    reference = lambda x, w, b, r: fused_norm_reference(x, w, b, r, kind=kind)
    assert_matches_reference(kernel, reference, (x, w, b, r), dtype)
    assert last_path("fused_norm") == KERNEL_IMPL


@examples(5)
@given(**STRATEGIES)
def test_matches_reference(rows, d, kind, residual, bias, dtype):
    check_matches_reference(rows, d, kind, residual, bias, dtype)


@pytest.mark.slow
@examples(15)
@given(**STRATEGIES)
def test_matches_reference_wide(rows, d, kind, residual, bias, dtype):
    check_matches_reference(rows, d, kind, residual, bias, dtype)


@pytest.mark.parametrize("kind,residual,step", [("rms", True, 2), ("layer", False, 8)])
def test_programs_walk_their_block_in_steps(kind, residual, step):
    # 37 rows in blocks of 16: three programs, the last one padded, each walking its rows
    check_matches_reference(37, 64, kind, residual, True, jnp.float32, block_rows=16,
                            step_rows=step)


@pytest.mark.skipif(COMPILED, reason="sets the backend to a GPU on the CPU")
@pytest.mark.parametrize("kind,residual", [("rms", True), ("layer", False)])
def test_gpu_default_launches_differ_per_pass_and_match_reference(monkeypatch, kind, residual):
    """On a GPU the forward takes small blocks and the backward 64-row blocks walked a few
    rows at a time (`default_launches`): 150 rows pad to 192, six forward programs of 32 rows
    and three backward ones of 64 rows in steps of 8."""
    monkeypatch.setattr(dispatch, "backend", lambda: "gpu")
    forward, backward = default_launches(150, 512, "gpu")
    assert forward == (32, 4, 32) and backward == (64, 4, 8)
    check_matches_reference(150, 512, kind, residual, True, jnp.float32)
    check_matches_reference(150, 512, kind, residual, False, jnp.bfloat16)


def test_launch_settings_are_checked():
    x = jnp.ones((4, 16))
    with pytest.raises(ConfigError, match="step_rows must be a power of two, got 3"):
        fused_norm(x, jnp.ones(16), impl=KERNEL_IMPL, step_rows=3)
    with pytest.raises(ConfigError, match="step_rows 16 is more than block_rows 8"):
        fused_norm(x, jnp.ones(16), impl=KERNEL_IMPL, block_rows=8, step_rows=16)


@pytest.mark.skipif(COMPILED, reason="sets the backend to a GPU on the CPU")
def test_auto_on_a_gpu_takes_xla_and_pallas_stays_the_kernel(monkeypatch):
    monkeypatch.setattr(dispatch, "backend", lambda: "gpu")
    x, w = jnp.ones((8, 128), jnp.bfloat16), jnp.ones(128)
    fused_norm(x, w, impl="auto")
    assert last_path("fused_norm") == "xla"  # the faster path on an H100 (XLA_FASTER_ON)
    # traced only: the Triton kernel cannot run on the CPU
    jax.eval_shape(lambda x: fused_norm(x, w, impl="pallas"), x)
    assert last_path("fused_norm") == "pallas"


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
