"""Fused norm-attention (softmax and softplus) in interpret mode against the XLA reference."""
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

from jaxlab.kernels.norm_attention import fused_norm_attention
from jaxlab.ops.attention import softmax_attention
from tests.kernels.helpers import assert_matches_reference, close

STRATEGIES = dict(
    t=st.integers(1, 40),
    extra_keys=st.sampled_from([0, 7]),
    heads=st.sampled_from([(2, 2), (4, 2), (2, 1)]),
    d=st.sampled_from([8, 16]),
    qk_norm=st.sampled_from([None, "rms", "layer"]),
    normalizer=st.sampled_from(["softmax", "softplus"]),
    causal=st.booleans(),
    masked=st.booleans(),
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]))


def check_matches_reference(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, dtype):
    h, h_kv = heads
    s = t + extra_keys
    keys = jax.random.split(jax.random.key(t * 31 + s), 6)
    q = (2 * jax.random.normal(keys[0], (2, t, h, d))).astype(dtype)
    k = (2 * jax.random.normal(keys[1], (2, s, h_kv, d))).astype(dtype)
    v = jax.random.normal(keys[2], (2, s, h_kv, d)).astype(dtype)
    q_scale = 1 + 0.1 * jax.random.normal(keys[3], (d,))
    k_scale = 1 + 0.1 * jax.random.normal(keys[4], (d,))
    mask = jax.random.bernoulli(keys[5], 0.7, (2, s)) if masked else None
    call = lambda impl: (lambda q, k, v, a, b: fused_norm_attention(
        q, k, v, a, b, mask, qk_norm=qk_norm, normalizer=normalizer, causal=causal, impl=impl,
        block_q=16, block_k=16))
    assert_matches_reference(call("interpret"), call("xla"), (q, k, v, q_scale, k_scale), dtype)


@settings(max_examples=3, deadline=None, derandomize=True)
@given(**STRATEGIES)
def test_matches_reference(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, dtype):
    check_matches_reference(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, dtype)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, derandomize=True)
@given(**STRATEGIES)
def test_matches_reference_wide(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, dtype):
    check_matches_reference(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, dtype)


def test_reference_equals_plain_softmax_attention_without_norms():
    keys = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(kk, (2, 9, 4, 8)) for kk in keys)
    mask = jnp.arange(9)[None, :] < jnp.array([[9], [5]])
    want = softmax_attention(q, k, v, causal=True, key_mask_bs=mask)
    close(fused_norm_attention(q, k, v, key_mask_bs=mask, causal=True, impl="xla"), want, 1e-5)
    close(fused_norm_attention(q, k, v, key_mask_bs=mask, causal=True, impl="interpret"), want, 1e-5)


@pytest.mark.parametrize("normalizer", ["softmax", "softplus"])
def test_rows_with_no_visible_key_are_zero_with_finite_grads(normalizer):
    q = jax.random.normal(jax.random.key(0), (1, 4, 2, 8))
    mask = jnp.zeros((1, 4), bool).at[0, 2].set(True)
    f = lambda q: fused_norm_attention(q, q, q, key_mask_bs=mask, causal=True, qk_norm="rms",
                                       normalizer=normalizer, impl="interpret").sum()
    out = fused_norm_attention(q, q, q, key_mask_bs=mask, causal=True, normalizer=normalizer,
                               impl="interpret")
    assert float(jnp.abs(out[0, :2]).max()) == 0.0  # queries 0, 1 see no unmasked key
    assert bool(jnp.isfinite(jax.grad(f)(q)).all())


def test_large_logits_do_not_overflow_in_bf16():
    q = (100 * jax.random.normal(jax.random.key(1), (1, 32, 2, 16))).astype(jnp.bfloat16)
    for normalizer in ("softmax", "softplus"):
        out = fused_norm_attention(q, q, q, normalizer=normalizer, causal=True, impl="interpret")
        assert bool(jnp.isfinite(out.astype(jnp.float32)).all())


@pytest.mark.parametrize("normalizer,qk_norm", [("softmax", "rms"), ("softplus", "layer")])
def test_ragged_grouped_causal_masked(normalizer, qk_norm):
    check_matches_reference(t=37, extra_keys=7, heads=(4, 2), d=16, qk_norm=qk_norm,
                            normalizer=normalizer, causal=True, masked=True, dtype=jnp.float32)
