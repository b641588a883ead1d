"""The kernels lower to Triton for a GPU without one: `dispatch.target("gpu")` builds the GPU
path and `lower(lowering_platforms=("cuda",))` runs the Pallas-to-Triton lowering on the CPU,
so a primitive the Triton lowering lacks, or a tile that is not a power of two, fails in CI."""
import jax
import jax.numpy as jnp
import pytest

from jaxlab.kernels import dispatch
from jaxlab.kernels.fused_norm import fused_norm
from jaxlab.kernels.linear_attention import chunked_linear_attention
from jaxlab.kernels.norm_attention import fused_norm_attention


def lower_grad_for_gpu(loss, *args):
    """The jitted gradient of `loss`, lowered for CUDA; returns the StableHLO text."""
    with dispatch.target("gpu"):
        lowered = jax.jit(jax.grad(loss, argnums=tuple(range(len(args))))).trace(*args).lower(
            lowering_platforms=("cuda",))
    return lowered.as_text()


def triton_calls(text: str) -> int:
    return text.count("__gpu$xla.gpu.triton")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("normalizer,qk_norm,segmented,length_scale", [
    ("softmax", "rms", True, False), ("softplus", "layer", False, False),
    ("softmax", None, False, False), ("softplus", "rms", False, True)])
def test_norm_attention_lowers(dtype, normalizer, qk_norm, segmented, length_scale):
    q, k = jnp.ones((2, 40, 4, 64), dtype), jnp.ones((2, 47, 2, 64), dtype)
    ids = (jnp.zeros((2, 40), jnp.int32), jnp.zeros((2, 47), jnp.int32)) if segmented else None
    loss = lambda q, k, v, a, b: fused_norm_attention(
        q, k, v, a, b, jnp.ones((2, 47), bool), qk_norm=qk_norm, normalizer=normalizer,
        causal=True, segment_ids=ids, length_scale=length_scale, impl="pallas",
        gpu_kernel="triton").astype(
        jnp.float32).sum()
    scale = jnp.ones((64,))
    assert triton_calls(lower_grad_for_gpu(loss, q, k, k, scale, scale)) == 3  # fwd, dq, dk/dv


@pytest.mark.parametrize("kind,launch", [("rms", {}), ("layer", {}),
                                         ("rms", dict(block_rows=16, step_rows=2))])
def test_fused_norm_lowers(kind, launch):
    x = jnp.ones((37, 128), jnp.bfloat16)
    loss = lambda x, w, b, r: sum(y.astype(jnp.float32).sum() for y in fused_norm(
        x, w, b, r, kind=kind, impl="pallas", **launch))
    assert triton_calls(lower_grad_for_gpu(loss, x, jnp.ones(128), jnp.zeros(128), x)) == 2


@pytest.mark.parametrize("output_norm", [False, True])
def test_linear_attention_lowers(output_norm):
    q = jnp.ones((2, 50, 2, 64), jnp.bfloat16)
    loss = lambda q, k, v, g: chunked_linear_attention(
        q, k, v, g, output_norm=output_norm, chunk_size=16, impl="pallas").astype(
        jnp.float32).sum()
    # dQ and dK/dV: the gradient of a sum never reads the forward's output, so XLA drops it
    assert triton_calls(lower_grad_for_gpu(loss, q, q, q, jnp.ones(64))) == 2
