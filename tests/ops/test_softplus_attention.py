"""LSSA / LSSAR: row normalisation, masking, bounded logits, the softmax special case, the
paper's shifted re-weighting, monotone sharpening in p, and values and gradients against a
per-row naive reference."""
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
    return tuple(jnp.asarray(scale * rng.standard_normal((b, t, h, d)), jnp.float32)
                 for _ in range(3))


@pytest.mark.parametrize("p", [1.0, 2.5, 15.0])
def test_rows_sum_to_one_nonnegative_and_future_exactly_zero(p):
    q, k, _ = qk()
    w = softplus_attention_weights(q, k, mask_b1ts=CAUSAL, reweight_p=p)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert float(w.min()) >= 0.0
    future = np.triu(np.ones((7, 7), bool), 1)
    assert np.all(np.asarray(w)[..., future] == 0.0)


def test_logits_are_bounded_by_the_length_scale_and_bf16_stays_finite():
    q, k, v = qk()
    q, k, v = (x.astype(jnp.bfloat16) for x in (q * 1e4, k * 1e4, v))  # raw q·k ≈ 1e8

    def loss(q, k, v):
        out = softplus_attention(q, k, v, causal=True, reweight_p=15.0)
        return jnp.sum(out.astype(jnp.float32))

    out = softplus_attention(q, k, v, causal=True, reweight_p=15.0)
    assert out.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    for g in jax.grad(loss, argnums=(0, 1, 2))(q, k, v):
        assert bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))
    # Cosine scores bound the logits by ±κ = ±log(d)·log(n), so within a row of n keys no weight
    # exceeds another by more than softplus(κ)/softplus(−κ), however large q and k are.
    w = np.asarray(softplus_attention_weights(q, k, mask_b1ts=CAUSAL), np.float64)
    for i in range(1, 7):
        kappa = math.log(4) * math.log(i + 1)
        ratio = w[..., i, : i + 1].max(-1) / w[..., i, : i + 1].min(-1)
        assert np.all(ratio <= np.logaddexp(0, kappa) / np.logaddexp(0, -kappa) * (1 + 1e-2))


def test_exp_with_constant_scale_and_raw_dots_is_softmax_attention():
    q, k, v = qk()
    mask = jnp.arange(7)[None].repeat(2, 0) < jnp.array([[5], [7]])
    got = softplus_attention(q, k, v, causal=True, key_mask_bs=mask, positive_map="exp",
                             scale=0.5, normalize_qk=False)
    want = softmax_attention(q, k, v, causal=True, key_mask_bs=mask, scale=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def entropy(w):
    return -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), -1)


@pytest.mark.parametrize("shift,powers", [(True, (1.0, 2.0, 4.0, 8.0, 15.0)),
                                          (False, (0.5, 1.0, 1.5, 2.0, 4.0, 8.0))])
def test_row_entropy_falls_monotonically_with_p_and_p1_is_identity(shift, powers):
    q, k, _ = qk(t=7, d=16, seed=3)
    base = softplus_attention_weights(q, k, mask_b1ts=CAUSAL)
    same = softplus_attention_weights(q, k, mask_b1ts=CAUSAL, reweight_p=1.0,
                                      reweight_shift=shift)
    np.testing.assert_array_equal(same, base)
    entropies = [entropy(softplus_attention_weights(q, k, mask_b1ts=CAUSAL, reweight_p=p,
                                                    reweight_shift=shift)) for p in powers]
    rows_with_choice = (slice(None), slice(None), slice(1, None))  # row 0 sees one key
    for lower, higher in zip(entropies[1:], entropies[:-1]):
        assert bool(jnp.all(lower[rows_with_choice] <= higher[rows_with_choice] + 1e-6))
        assert bool(jnp.any(lower[rows_with_choice] < higher[rows_with_choice] - 1e-3))


def test_reweight_matches_the_shifted_power_formula():
    w = jnp.array([[[[0.5, 0.3, 0.15, 0.05, 0.0]]]])
    mask = jnp.array([True, True, True, True, False])
    shifted = np.maximum(4 * np.array([0.5, 0.3, 0.15, 0.05, 0.0]) - 1, 0.0)  # n = 4 keys
    want = shifted ** 3 / np.sum(shifted ** 3)
    np.testing.assert_allclose(reweight(w, 3.0, mask)[0, 0, 0], want, rtol=1e-6)
    plain = np.array([0.5, 0.3, 0.15, 0.05, 0.0]) ** 3
    np.testing.assert_allclose(reweight(w, 3.0, mask, shift=False)[0, 0, 0], plain / plain.sum(),
                               rtol=1e-6)


def test_short_and_uniform_rows_keep_their_weight():
    # Rows that see ≤ 3 keys have offset 0, so none is zeroed; a uniform row has nothing above
    # 1/n and falls back to the unshifted power (still uniform) instead of vanishing.
    q, k, _ = qk(t=7, d=8)
    w = softplus_attention_weights(q, k, mask_b1ts=CAUSAL, reweight_p=15.0)
    assert bool(jnp.all(w[:, :, :3, :3][jnp.tril(jnp.ones((3, 3), bool))[None, None]
                                        .repeat(2, 0).repeat(2, 1)] > 0))
    uniform = jnp.full((1, 1, 1, 6), 1 / 6)
    np.testing.assert_allclose(reweight(uniform, 15.0, jnp.ones(6, bool)), uniform, rtol=1e-6)


def test_p15_at_4096_keys_with_one_dominant_key_is_finite():
    d, n = 16, 4096
    k = jax.random.normal(jax.random.key(0), (1, n, 1, d))
    q = k[:, 100:101] * 3.0  # aligned with key 100
    f = lambda q, k: softplus_attention(q, k, k, causal=False, reweight_p=15.0).sum()
    out = softplus_attention(q, k, k, causal=False, reweight_p=15.0)
    assert bool(jnp.all(jnp.isfinite(out)))
    w = softplus_attention_weights(q, k, reweight_p=15.0)
    assert int(jnp.argmax(w[0, 0, 0])) == 100
    for g in jax.grad(f, argnums=(0, 1))(q, k):
        assert bool(jnp.all(jnp.isfinite(g)))


def test_length_scale_is_log_d_times_log_n():
    n = jnp.array([1.0, 2.0, 64.0, 4096.0])
    np.testing.assert_allclose(length_scale(n, 64), math.log(64) * np.log(np.asarray(n)),
                               rtol=1e-6)
    assert float(length_scale(n, 64)[0]) == 0.0  # one visible key: any scale gives weight 1


def naive(q, k, v, *, p, shift=True):
    """Row by row with Python loops over the visible keys."""
    b, t, h, d = q.shape
    rows = []
    for i in range(t):
        n = i + 1
        qi = q[:, i] / jnp.linalg.norm(q[:, i], axis=-1, keepdims=True)
        kn = k[:, :n] / jnp.linalg.norm(k[:, :n], axis=-1, keepdims=True)
        s = jax.nn.softplus(math.log(d) * math.log(n) * jnp.einsum("bhd,bshd->bhs", qi, kn))
        a = s / s.sum(-1, keepdims=True)
        if p != 1.0:
            x = jnp.maximum(n * a - (0.0 if n <= 3 else 1.0), 0.0) if shift else a
            a = x ** p / jnp.sum(x ** p, -1, keepdims=True)
        rows.append(jnp.einsum("bhs,bshd->bhd", a, v[:, :n]))
    return jnp.stack(rows, 1)


@pytest.mark.parametrize("p,shift", [(1.0, True), (3.0, True), (2.0, False)])
def test_values_and_gradients_match_naive_rows(p, shift):
    q, k, v = qk(d=8)
    ours = lambda q, k, v: softplus_attention(q, k, v, causal=True, reweight_p=p,
                                              reweight_shift=shift)
    ref = lambda q, k, v: naive(q, k, v, p=p, shift=shift)
    np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(ref)(q, k, v), rtol=1e-5,
                               atol=1e-6)
    w = jnp.cos(jnp.arange(q.size, dtype=jnp.float32)).reshape(q.shape)
    g_ours = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_grouped_kv_heads_read_their_group():
    q, k, v = qk(h=4)
    grouped = softplus_attention(q, k[:, :, :2], v[:, :, :2], causal=True)
    full = softplus_attention(q, jnp.repeat(k[:, :, :2], 2, 2), jnp.repeat(v[:, :, :2], 2, 2),
                              causal=True)
    np.testing.assert_allclose(grouped, full, rtol=1e-6)


def test_raw_logits_of_1e4_in_bf16_stay_finite():
    """Without the cosine normalisation (normalize_qk=False, constant scale) the logits reach
    1e4; Softplus is linear there and the ℓ1 sums stay finite, values and gradients."""
    q, k, v = qk(d=16)
    q, k = q * 35.0, k * 35.0  # |q·k| beyond 1e4
    logits = jnp.einsum("bthd,bshd->bhts", q, k)
    assert float(jnp.abs(logits).max()) > 1e4
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    call = lambda q, k, v: softplus_attention(q, k, v, causal=True, normalize_qk=False, scale=1.0,
                                              reweight_p=15.0)
    assert bool(jnp.all(jnp.isfinite(call(q, k, v).astype(jnp.float32))))
    grads = jax.grad(lambda *a: call(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))
