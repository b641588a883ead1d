"""LSSA / LSSAR: row normalisation, masking, bf16 stability, the softmax special case,
monotone sharpening in p, and values and gradients against a per-row naive reference."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.ops.attention import softmax_attention
from jaxlab.ops.softplus_attention import (length_scale, reweight, softplus_attention,
                                           softplus_attention_weights)

CAUSAL = jnp.tril(jnp.ones((7, 7), bool))[None, None]


def qk(b=2, t=7, h=2, d=4, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(scale * rng.standard_normal((b, t, h, d)), jnp.float32) for _ in range(3))


@pytest.mark.parametrize("p", [1.0, 2.5])
def test_rows_sum_to_one_nonnegative_and_future_exactly_zero(p):
    q, k, _ = qk()
    w = softplus_attention_weights(q, k, mask_b1ts=CAUSAL, train_length=4, reweight_p=p)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert float(w.min()) >= 0.0
    future = np.triu(np.ones((7, 7), bool), 1)
    assert np.all(np.asarray(w)[..., future] == 0.0)


def test_bf16_logits_up_to_1e4_stay_finite():
    q, k, v = qk(scale=1.0)
    big = 70.0
    q, k, v = (x.astype(jnp.bfloat16) for x in (q * big, k * big, v))
    logits = 0.5 * jnp.einsum("bthd,bshd->bhts", q.astype(jnp.float32), k.astype(jnp.float32))
    assert float(jnp.abs(logits).max()) > 1e4  # κ ≥ 1/√d = 0.5 scales q·k into the logits

    def loss(q, k, v):
        out = softplus_attention(q, k, v, causal=True, train_length=4, reweight_p=3.0)
        return jnp.sum(out.astype(jnp.float32))

    out = softplus_attention(q, k, v, causal=True, train_length=4, reweight_p=3.0)
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    for g in jax.grad(loss, argnums=(0, 1, 2))(q, k, v):
        assert bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))


def test_exp_with_constant_scale_is_softmax_attention():
    q, k, v = qk()
    mask = jnp.arange(7)[None].repeat(2, 0) < jnp.array([[5], [7]])
    got = softplus_attention(q, k, v, causal=True, key_mask_bs=mask, positive_map="exp",
                             scale=0.5 ** 1)
    want = softmax_attention(q, k, v, causal=True, key_mask_bs=mask, scale=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def entropy(w):
    return -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), -1)


def test_row_entropy_falls_monotonically_with_p_and_p1_is_identity():
    q, k, _ = qk(scale=0.7)
    base = softplus_attention_weights(q, k, mask_b1ts=CAUSAL, train_length=4)
    same = softplus_attention_weights(q, k, mask_b1ts=CAUSAL, train_length=4, reweight_p=1.0)
    np.testing.assert_array_equal(same, base)
    entropies = [entropy(softplus_attention_weights(q, k, mask_b1ts=CAUSAL, train_length=4,
                                                    reweight_p=p))
                 for p in (0.5, 1.0, 1.5, 2.0, 4.0, 8.0)]
    rows_with_choice = (slice(None), slice(None), slice(1, None))  # row 0 sees one key
    for lower, higher in zip(entropies[1:], entropies[:-1]):
        assert bool(jnp.all(lower[rows_with_choice] < higher[rows_with_choice]))
    np.testing.assert_allclose(entropies[0][..., 0], 0.0, atol=1e-7)


def test_reweight_matches_power_formula():
    w = jnp.array([[[[0.5, 0.3, 0.2, 0.0]]]])
    mask = jnp.array([True, True, True, False])
    want = np.array([0.5, 0.3, 0.2, 0.0]) ** 3
    np.testing.assert_allclose(reweight(w, 3.0, mask)[0, 0, 0], want / want.sum(), rtol=1e-6)


def test_length_scale_is_inverse_sqrt_d_up_to_training_length_then_grows_as_log():
    n = jnp.array([1.0, 16.0, 64.0, 256.0])
    got = length_scale(n, 16, train_length=64)
    np.testing.assert_allclose(got, [0.25, 0.25, 0.25, 0.25 * math.log(256) / math.log(64)],
                               rtol=1e-6)
    np.testing.assert_allclose(length_scale(n, 16, None), 0.25)


def naive(q, k, v, *, train_length, p):
    b, t, h, d = q.shape
    rows = []
    for i in range(t):
        n = i + 1
        kappa = max(1.0, math.log(n) / math.log(train_length)) / math.sqrt(d)
        s = jax.nn.softplus(kappa * jnp.einsum("bhd,bshd->bhs", q[:, i], k[:, :n]))
        a = s / s.sum(-1, keepdims=True)
        a = a ** p / jnp.sum(a ** p, -1, keepdims=True)
        rows.append(jnp.einsum("bhs,bshd->bhd", a, v[:, :n]))
    return jnp.stack(rows, 1)


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_values_and_gradients_match_naive_rows(p):
    q, k, v = qk()
    ours = lambda q, k, v: softplus_attention(q, k, v, causal=True, train_length=3, reweight_p=p)
    ref = lambda q, k, v: naive(q, k, v, train_length=3, p=p)
    np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(ref)(q, k, v), rtol=1e-5, atol=1e-6)
    w = jnp.cos(jnp.arange(q.size, dtype=jnp.float32)).reshape(q.shape)
    g_ours = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_grouped_kv_heads_read_their_group():
    q, k, v = qk(h=4)
    grouped = softplus_attention(q, k[:, :, :2], v[:, :, :2], causal=True, train_length=4)
    full = softplus_attention(q, jnp.repeat(k[:, :, :2], 2, 2), jnp.repeat(v[:, :, :2], 2, 2),
                              causal=True, train_length=4)
    np.testing.assert_allclose(grouped, full, rtol=1e-6)
