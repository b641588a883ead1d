"""Linear attention: recurrent ≡ chunked ≡ parallel ≡ a naive loop, on values, state and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.ops import linear_attention as la

SHAPES = [(1, 5, 1, 3, 4, 2),      # (B, T, H, Dk, Dv, C): T % C != 0
          (2, 16, 2, 4, 4, 4),     # T divisible by C
          (2, 13, 3, 8, 5, 8),     # T % C != 0, Dk != Dv
          (1, 7, 2, 4, 4, 16)]     # C > T


def inputs(b, t, h, dk, dv, seed=0):
    rng = np.random.default_rng(seed)
    q, k = (la.FEATURE_MAPS["elu1"](jnp.asarray(rng.standard_normal((b, t, h, dk)), jnp.float32))
            for _ in range(2))
    v = jnp.asarray(rng.standard_normal((b, t, h, dv)), jnp.float32)
    state = la.LinearState(jnp.asarray(rng.uniform(0, 1, (b, h, dk, dv)), jnp.float32),
                           jnp.asarray(rng.uniform(0.5, 1, (b, h, dk)), jnp.float32))
    return q, k, v, state


def naive(q, k, v, state, *, normalize, scale=1.0, eps=1e-6):
    """The definition, materialised: S_t = S_0 + Σ_{j≤t} k_j v_jᵀ for every t at once."""
    kv_t = state.kv_bhkv[:, None] + jnp.cumsum(jnp.einsum("bthk,bthv->bthkv", k, v), axis=1)
    k_t = state.k_bhk[:, None] + jnp.cumsum(k, axis=1)
    num = jnp.einsum("bthk,bthkv->bthv", q, kv_t)
    den = jnp.einsum("bthk,bthk->bth", q, k_t)[..., None]
    out = num / (den + eps) if normalize else num * scale
    return out, la.LinearState(kv_t[:, -1], k_t[:, -1])


def run_form(form, c, normalize):
    def f(q, k, v, state):
        return la.linear_attention(q, k, v, form=form, chunk_size=c, normalize=normalize,
                                   scale=0.5, initial_state=state)
    return f


def value_and_grads(fn):
    """One compiled function giving the output, the final state and all four gradients."""
    def loss(q, k, v, state):
        out, final = fn(q, k, v, state)
        w = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
        total = jnp.sum(out * w) + jnp.sum(jnp.sin(final.kv_bhkv)) + jnp.sum(jnp.cos(final.k_bhk))
        return total, (out, final)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))


CASES = [(shape, True) for shape in SHAPES] + [(SHAPES[0], False), (SHAPES[2], False)]


@pytest.mark.parametrize("shape,normalize", CASES)
def test_forms_agree_on_values_state_and_gradients(shape, normalize):
    *dims, c = shape
    args = inputs(*dims)
    ref_grads, (ref_out, ref_state) = value_and_grads(
        lambda *a: naive(*a, normalize=normalize, scale=0.5))(*args)
    for form in la.FORMS:
        grads, (out, state) = value_and_grads(run_form(form, c, normalize))(*args)
        np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5, err_msg=form)
        for got, want in zip(state, ref_state):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=form)
        # dq, dk, dv and the initial state's (dS0, dz0)
        for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=form)


def test_streaming_in_two_calls_equals_one_call():
    q, k, v, state = inputs(2, 11, 2, 4, 4)
    whole, whole_state = la.linear_attention_chunked(q, k, v, chunk_size=4, initial_state=state)
    first, mid = la.linear_attention_recurrent(q[:, :6], k[:, :6], v[:, :6], initial_state=state)
    second, end = la.linear_attention_parallel(q[:, 6:], k[:, 6:], v[:, 6:], initial_state=mid)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(end.kv_bhkv, whole_state.kv_bhkv, rtol=1e-5, atol=1e-6)


def test_global_form_equals_parallel_without_mask_at_last_position():
    q, k, v, _ = inputs(2, 6, 2, 4, 3)
    full = la.linear_attention_global(q, k, v)
    causal, _ = la.linear_attention_parallel(q, k, v)
    np.testing.assert_allclose(full[:, -1], causal[:, -1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(full[:, 0], causal[:, 0])
    masked = la.linear_attention_global(q, k, v, key_mask_bs=jnp.arange(6)[None].repeat(2, 0) < 4)
    np.testing.assert_allclose(masked, la.linear_attention_global(q[:, :], k[:, :4], v[:, :4]),
                               rtol=1e-5, atol=1e-6)


def test_unknown_form_is_named():
    q, k, v, _ = inputs(1, 2, 1, 2, 2)
    with pytest.raises(ValueError, match="'scan'.*chunked"):
        la.linear_attention(q, k, v, form="scan")
