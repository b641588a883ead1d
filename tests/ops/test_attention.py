"""softmax_attention and rotary embeddings against naive references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.ops.attention import apply_rope, attention_mask, rope_angles, softmax_attention

B, T, H, D = 2, 6, 4, 8
# One compiled program per shape is much faster than op-by-op dispatch.
attention = jax.jit(softmax_attention, static_argnames=("causal", "scale"))
rope = jax.jit(apply_rope)


def random_qkv(rng, t=T, s=T, h=H, h_kv=H, d=D):
    q = rng.standard_normal((B, t, h, d)).astype(np.float32)
    k = rng.standard_normal((B, s, h_kv, d)).astype(np.float32)
    v = rng.standard_normal((B, s, h_kv, d)).astype(np.float32)
    return q, k, v


def allowed_keys(batch, i, t, s, causal, key_mask):
    allowed = np.ones(s, bool)
    if causal:
        allowed &= np.arange(s) <= i + s - t
    if key_mask is not None:
        allowed &= key_mask[batch].astype(bool)
    return allowed


def naive_attention_numpy(q, k, v, *, causal=False, key_mask=None):
    """One (batch, head, query) at a time, in float64; fully masked rows give zeros."""
    b, t, h, d = q.shape
    s, h_kv = k.shape[1], k.shape[2]
    out = np.zeros((b, t, h, d))
    for bi in range(b):
        for hi in range(h):
            kv_head = hi // (h // h_kv)
            for i in range(t):
                allowed = allowed_keys(bi, i, t, s, causal, key_mask)
                if not allowed.any():
                    continue
                logits = k[bi, :, kv_head].astype(np.float64) @ q[bi, i, hi] / np.sqrt(d)
                logits = np.where(allowed, logits, -np.inf)
                weights = np.exp(logits - logits.max())
                out[bi, i, hi] = (weights / weights.sum()) @ v[bi, :, kv_head]
    return out


def naive_attention_jnp(q, k, v, *, causal=False, key_mask=None):
    """Plain jnp with kv heads repeated explicitly; for autodiff (no fully masked rows)."""
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    t, s = q.shape[1], k.shape[1]
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / jnp.sqrt(q.shape[-1])
    allowed = jnp.ones((q.shape[0], 1, t, s), bool)
    if causal:
        allowed &= jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + s - t
    if key_mask is not None:
        allowed &= key_mask.astype(bool)[:, None, None, :]
    weights = jnp.where(allowed, jnp.exp(logits - logits.max(-1, keepdims=True)), 0.0)
    probs = weights / weights.sum(-1, keepdims=True)
    return jnp.einsum("bhts,bshd->bthd", probs, v)


KEY_MASK = np.array([[1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1]], np.int32)


@pytest.mark.parametrize("causal,key_mask,h_kv", [
    (False, None, H), (True, None, H), (False, KEY_MASK, H), (True, KEY_MASK, H),
    (True, KEY_MASK, 2), (False, None, 1)])
def test_matches_naive_loop(causal, key_mask, h_kv):
    q, k, v = random_qkv(np.random.default_rng(0), h_kv=h_kv)
    got = attention(q, k, v, causal=causal, key_mask_bs=key_mask)
    np.testing.assert_allclose(got, naive_attention_numpy(q, k, v, causal=causal, key_mask=key_mask),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h_kv", [2, 1])
def test_grouped_query_equals_repeated_kv_heads(h_kv):
    q, k, v = random_qkv(np.random.default_rng(1), h_kv=h_kv)
    group = H // h_kv
    grouped = attention(q, k, v, causal=True)
    repeated = attention(q, np.repeat(k, group, axis=2), np.repeat(v, group, axis=2),
                                 causal=True)
    np.testing.assert_allclose(grouped, repeated, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("h_kv", [H, 2])
def test_grads_match_naive_reference(h_kv):
    q, k, v = random_qkv(np.random.default_rng(2), h_kv=h_kv)
    cotangent = np.random.default_rng(3).standard_normal(q.shape).astype(np.float32)

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v, causal=True, key_mask=KEY_MASK) * cotangent)

    def ours(q, k, v, causal, key_mask):
        return attention(q, k, v, causal=causal, key_mask_bs=key_mask)

    got = jax.jit(jax.grad(lambda *a: loss(ours, *a), argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(lambda *a: loss(naive_attention_jnp, *a), argnums=(0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        assert np.abs(w).max() > 1e-3  # the reference gradient is not trivially zero
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_explicit_scale_equals_rescaled_queries():
    q, k, v = random_qkv(np.random.default_rng(13))
    np.testing.assert_allclose(attention(q, k, v, scale=1.0),
                               attention(q * np.sqrt(D), k, v), rtol=1e-5, atol=1e-5)


def test_fully_masked_query_gives_zeros_and_finite_grads():
    q, k, v = random_qkv(np.random.default_rng(4))
    key_mask = np.array([[0] * T, [1] * T], np.int32)  # batch 0 sees no key at all
    out = attention(q, k, v, key_mask_bs=key_mask)
    np.testing.assert_array_equal(out[0], 0.0)
    assert np.abs(np.asarray(out[1])).max() > 0
    grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, key_mask_bs=key_mask) ** 2),
                     argnums=(0, 1, 2)))(q, k, v)
    for g in grads:
        assert np.all(np.isfinite(g))
        np.testing.assert_array_equal(g[0], 0.0)


def test_bfloat16_inputs_stay_close_to_float32():
    q, k, v = random_qkv(np.random.default_rng(5), h_kv=2)
    full = attention(q, k, v, causal=True)
    half = attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), causal=True)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), full, atol=5e-2, rtol=5e-2)


def test_causal_alignment_when_queries_are_fewer_than_keys():
    q_len, k_len = 3, 8
    mask = np.asarray(attention_mask(q_len, k_len, causal=True))[0, 0]
    expected = np.arange(k_len)[None, :] <= np.arange(q_len)[:, None] + (k_len - q_len)
    np.testing.assert_array_equal(mask, expected)

    q, k, v = random_qkv(np.random.default_rng(6), t=k_len, s=k_len)
    tail = attention(q[:, -q_len:], k, v, causal=True)
    np.testing.assert_allclose(tail, attention(q, k, v, causal=True)[:, -q_len:],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tail, naive_attention_numpy(q[:, -q_len:], k, v, causal=True),
                               rtol=1e-5, atol=1e-5)


def test_attention_mask_is_none_when_nothing_is_masked():
    assert attention_mask(4, 4, causal=False) is None


def test_heads_not_multiple_of_kv_heads_raises():
    q, k, v = random_qkv(np.random.default_rng(7), h=3, h_kv=2)
    with pytest.raises(ValueError, match="multiple"):
        softmax_attention(q, k, v)


# ---- rotary embeddings ----

def naive_rope(x, positions, base=10000.0):
    """Rotates pair (i, i + d/2) by position * base^(-2i/d), one pair at a time."""
    out = np.array(x, np.float64)
    half = x.shape[-1] // 2
    for bi in range(x.shape[0]):
        for ti in range(x.shape[1]):
            for i in range(half):
                angle = positions[bi, ti] * base ** (-2 * i / x.shape[-1])
                a, b = x[bi, ti, :, i], x[bi, ti, :, i + half]
                out[bi, ti, :, i] = a * np.cos(angle) - b * np.sin(angle)
                out[bi, ti, :, i + half] = b * np.cos(angle) + a * np.sin(angle)
    return out


def random_positions(rng, t=T):
    return rng.integers(0, 50, size=(B, t)).astype(np.int32)


def test_rope_matches_naive_rotation():
    rng = np.random.default_rng(8)
    x, positions = rng.standard_normal((B, T, H, D)).astype(np.float32), random_positions(rng)
    np.testing.assert_allclose(rope(x, positions), naive_rope(x, positions), rtol=1e-4, atol=1e-4)
    cos, sin = rope_angles(positions, D)
    assert cos.shape == sin.shape == (B, T, 1, D // 2)


def test_rope_grad_is_the_inverse_rotation():
    rng = np.random.default_rng(9)
    x, positions = rng.standard_normal((B, T, H, D)).astype(np.float32), random_positions(rng)
    cotangent = rng.standard_normal(x.shape).astype(np.float32)
    grad = jax.grad(lambda x: jnp.sum(rope(x, positions) * cotangent))(x)
    np.testing.assert_allclose(grad, naive_rope(cotangent, -positions), rtol=1e-4, atol=1e-4)


def test_rope_preserves_head_vector_norms():
    rng = np.random.default_rng(10)
    x, positions = rng.standard_normal((B, T, H, D)).astype(np.float32), random_positions(rng)
    np.testing.assert_allclose(np.linalg.norm(rope(x, positions), axis=-1),
                               np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_dot_product_depends_only_on_relative_position():
    rng = np.random.default_rng(11)
    q = rng.standard_normal((1, T, 1, D)).astype(np.float32)
    k = rng.standard_normal((1, T, 1, D)).astype(np.float32)
    q_pos, k_pos = np.arange(T)[None] + 3, np.arange(T)[None][:, ::-1].copy()

    def scores(shift):
        rq, rk = rope(q, q_pos + shift), rope(k, k_pos + shift)
        return np.einsum("btd,bsd->bts", rq[:, :, 0], rk[:, :, 0])

    unshifted = scores(0)
    np.testing.assert_allclose(scores(7), unshifted, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores(20), unshifted, rtol=1e-4, atol=1e-4)
    plain = np.einsum("btd,bsd->bts", q[:, :, 0], k[:, :, 0])
    assert np.abs(unshifted - plain).max() > 1e-2  # the rotation does change scores


def test_rope_at_position_zero_is_identity():
    x = np.random.default_rng(12).standard_normal((B, T, H, D)).astype(np.float32)
    np.testing.assert_allclose(rope(x, np.zeros((B, T), np.int32)), x, rtol=0, atol=1e-7)


def test_rope_odd_head_dim_raises():
    with pytest.raises(ValueError, match="even"):
        apply_rope(np.zeros((1, 2, 1, 5), np.float32), np.zeros((1, 2), np.int32))
