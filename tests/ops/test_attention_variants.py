"""IDW, block-diagonal (DiagAttention), SLA, NormAttention's invariance, LSA ≡ one GD step,
depthwise convolutions and attention logit soft-capping: values and gradients against naive forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.ops import attention_variants as av
from jaxlab.ops import linear_attention as la
from jaxlab.ops.attention import softmax_attention


def arrays(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes)


def test_idw_weights_are_inverse_distances_with_gradients():
    q, k, v = arrays((2, 5, 2, 3), (2, 5, 2, 3), (2, 5, 2, 3))

    def naive(q, k, v):
        dist = jnp.sqrt(jnp.sum((q[:, :, None] - k[:, None]) ** 2, -1))  # b t s h
        inv = jnp.where(jnp.tril(jnp.ones((5, 5), bool))[None, :, :, None], 1.0 / (dist + 1e-6), 0.0)
        return jnp.einsum("btsh,bshd->bthd", inv / inv.sum(2, keepdims=True), v)

    ours = lambda q, k, v: av.idw_attention(q, k, v, causal=True)
    np.testing.assert_allclose(jax.jit(ours)(q, k, v), jax.jit(naive)(q, k, v), rtol=1e-5, atol=1e-6)
    gw = jnp.sin(jnp.arange(q.size, dtype=jnp.float32)).reshape(q.shape)
    grads = lambda f: jax.jit(jax.grad(lambda *x: jnp.sum(f(*x) * gw), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(grads(ours), grads(naive)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_idw_query_on_a_key_is_finite_and_picks_it():
    k, v = arrays((1, 4, 1, 3), (1, 4, 1, 3))
    q = k[:, 2:3]
    out = av.idw_attention(q, k, v)
    np.testing.assert_allclose(out[0, 0], v[0, 2], atol=1e-4)
    grads = jax.grad(lambda q: av.idw_attention(q, k, v).sum())(q)
    assert bool(jnp.all(jnp.isfinite(grads)))


@pytest.mark.parametrize("t,block", [(12, 4), (10, 4), (3, 8)])
def test_block_diagonal_equals_masked_softmax_and_isolates_blocks(t, block):
    q, k, v = arrays((2, t, 2, 4), (2, t, 2, 4), (2, t, 2, 4))
    blocks = jnp.arange(t) // block
    mask = (blocks[:, None] == blocks[None, :]) & jnp.tril(jnp.ones((t, t), bool))
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / 2.0
    want = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), -1), v)
    got = av.block_diagonal_attention(q, k, v, block_size=block, causal=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Perturbing one token of block j changes nothing outside block j.
    j = min(1, (t - 1) // block)
    token = j * block
    bumped = av.block_diagonal_attention(q, k.at[:, token].add(3.0), v.at[:, token].add(3.0),
                                         block_size=block, causal=True)
    outside = np.asarray(blocks != j)
    np.testing.assert_array_equal(np.asarray(bumped)[:, outside], np.asarray(got)[:, outside])
    assert not np.allclose(np.asarray(bumped)[:, token], np.asarray(got)[:, token])


@pytest.mark.parametrize("causal", [True, False])
def test_sla_orderings_agree(causal):
    q, k, v = (jax.nn.relu(x) for x in arrays((2, 9, 2, 4), (2, 9, 2, 4), (2, 9, 2, 5)))
    left = av.sla_attention_quadratic(q, k, v, causal=causal)
    if causal:
        right, _ = la.linear_attention_chunked(q, k, v, chunk_size=4, normalize=True, eps=1e-6)
    else:
        right = la.linear_attention_global(q, k, v, normalize=True, eps=1e-6)
    np.testing.assert_allclose(left, right, rtol=1e-5, atol=1e-5)


def test_norm_attention_output_is_invariant_to_scaling_phi_q():
    q, k, v = arrays((2, 6, 2, 4), (2, 6, 2, 4), (2, 6, 2, 4))
    q, k = la.FEATURE_MAPS["elu1"](q), la.FEATURE_MAPS["elu1"](k)

    def norm_attention(q):
        out, _ = la.linear_attention_parallel(q, k, v, normalize=False)
        return av.rms_normalize(out.reshape(2, 6, 8), eps=1e-12)

    base = norm_attention(q)
    for c in (0.01, 3.0, 250.0):
        np.testing.assert_allclose(norm_attention(c * q), base, rtol=1e-5, atol=1e-5)


def test_causal_conv_streams_and_matches_naive():
    x, kernel = arrays((2, 7, 3), (4, 3))
    full = av.causal_depthwise_conv(x, kernel)
    naive = np.zeros_like(np.asarray(x))
    for t in range(7):
        for i in range(4):
            src = t - 3 + i
            if src >= 0:
                naive[:, t] += np.asarray(x[:, src]) * np.asarray(kernel[i])
    np.testing.assert_allclose(full, naive, rtol=1e-5, atol=1e-6)
    tail = av.causal_depthwise_conv(x[:, 5:], kernel, history_bkc=x[:, 2:5])
    np.testing.assert_allclose(tail, full[:, 5:], rtol=1e-5, atol=1e-6)


def test_grid_conv_matches_naive_sum():
    x, kernel = arrays((1, 4, 4, 2), (3, 3, 2))
    got = av.grid_depthwise_conv(x, kernel)
    padded = np.pad(np.asarray(x), [(0, 0), (1, 1), (1, 1), (0, 0)])
    want = sum(padded[:, i:i + 4, j:j + 4] * np.asarray(kernel[i, j]) for i in range(3) for j in range(3))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_one_lsa_layer_with_the_construction_is_one_gd_step():
    x_dim, n, eta = 3, 10, 0.7
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((4, n + 1, x_dim)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((4, x_dim, 1)), jnp.float32)
    y = jnp.einsum("bnd,bde->bne", x, w).at[:, -1].set(0.0)  # the query's y slot is empty
    tokens = jnp.concatenate([x, y], -1)
    out = av.lsa_update(tokens, *av.gd_construction(x_dim, 1, eta), normalizer=n)
    gd = av.gd_step_prediction(x[:, :n], y[:, :n], x[:, -1], eta)
    np.testing.assert_allclose(-out[:, -1, x_dim:], gd, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, -1, :x_dim], x[:, -1], atol=1e-6)  # x slot untouched


def test_softcap_bounds_logits_and_is_off_by_default():
    q, k, v = arrays((1, 4, 1, 2), (1, 4, 1, 2), (1, 4, 1, 2))
    q = q * 50
    capped = softmax_attention(q, k, v, causal=True, softcap=2.0, scale=1.0)
    logits = 2.0 * jnp.tanh(jnp.einsum("bthd,bshd->bhts", q, k) / 2.0)
    mask = jnp.tril(jnp.ones((4, 4), bool))
    want = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), -1), v)
    np.testing.assert_allclose(capped, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(softmax_attention(q, k, v, softcap=0.0),
                                  softmax_attention(q, k, v))


@pytest.mark.parametrize("causal,kv_heads,t,s", [(True, 4, 6, 6), (False, 2, 5, 7), (True, 1, 6, 6),
                                                 (True, 4, 3, 6)])
def test_fused_softmax_path_equals_the_einsum_path(causal, kv_heads, t, s):
    q, k, v = arrays((2, t, 4, 8), (2, s, kv_heads, 8), (2, s, kv_heads, 8))
    fused = jax.jit(lambda q, k, v: softmax_attention(q, k, v, causal=causal))
    plain = jax.jit(lambda q, k, v: softmax_attention(q, k, v, causal=causal, fused=False))
    np.testing.assert_allclose(fused(q, k, v), plain(q, k, v), rtol=1e-5, atol=1e-6)
    took_fused = str(jax.make_jaxpr(fused)(q, k, v)) != str(jax.make_jaxpr(plain)(q, k, v))
    assert took_fused == (t == s or not causal)  # a short causal query block over a cache is not
    loss = lambda f: jax.grad(lambda *x: jnp.sum(jnp.sin(f(*x))), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(loss(fused), loss(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
