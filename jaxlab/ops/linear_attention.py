"""Kernel linear attention in three interchangeable forms, on [batch, time, heads, dim] arrays.

q and k are already passed through a feature map φ (see FEATURE_MAPS). Causal output:

    S_t = S_0 + Σ_{j≤t} k_j v_jᵀ,  z_t = z_0 + Σ_{j≤t} k_j
    o_t = scale · q_t S_t                        (normalize=False)
    o_t = q_t S_t / (q_t · z_t + eps)           (normalize=True; scale cancels)

The state (S, z) is what streaming decode carries between calls. The three forms compute the same
thing: `recurrent` is a lax.scan over time (O(T) sequential steps), `parallel` a masked T×T
product, `chunked` a masked product inside chunks of C tokens plus the running state between them.
All math runs in float32, or float64 for float64 inputs (tests take exact answers that way).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxlab.ops.norms import compute_dtype

FEATURE_MAPS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "elu1": lambda x: jax.nn.elu(x) + 1.0,
    "relu": jax.nn.relu,
    "identity": lambda x: x,
    "softplus": jax.nn.softplus,
}
FORMS = ("recurrent", "chunked", "parallel")


class LinearState(NamedTuple):
    """Running sums: kv_bhkv = Σ k vᵀ and k_bhk = Σ k (the denominator's half)."""
    kv_bhkv: jax.Array
    k_bhk: jax.Array


def zero_state(batch: int, heads: int, key_dim: int, value_dim: int) -> LinearState:
    """The empty recurrent state: S = Σ φ(k)vᵀ [b, h, dk, dv] and z = Σ φ(k) [b, h, dk], zeros."""
    return LinearState(jnp.zeros((batch, heads, key_dim, value_dim), jnp.float32),
                       jnp.zeros((batch, heads, key_dim), jnp.float32))


def _finish(num, den, *, normalize, scale, eps, dtype):
    out = num / (den[..., None] + eps) if normalize else num * scale
    return out.astype(dtype)


def _prepare(q, k, v, initial_state):
    b, _, h, dk = q.shape
    if initial_state is None:
        initial_state = zero_state(b, h, dk, v.shape[-1])
    work = compute_dtype(jnp.result_type(q.dtype, k.dtype, v.dtype))
    return (*(x.astype(work) for x in (q, k, v)),
            LinearState(*(s.astype(work) for s in initial_state)))


def linear_attention_recurrent(q_bthk, k_bthk, v_bthv, *, normalize=True, scale=1.0, eps=1e-6,
                               initial_state: LinearState | None = None):
    """One state update per token with lax.scan; returns (out_bthv, final LinearState)."""
    q, k, v, state = _prepare(q_bthk, k_bthk, v_bthv, initial_state)

    def step(carry, qkv_t):
        kv, ksum = carry
        q_t, k_t, v_t = qkv_t
        kv = kv + k_t[..., :, None] * v_t[..., None, :]
        ksum = ksum + k_t
        num = jnp.einsum("bhk,bhkv->bhv", q_t, kv)
        den = jnp.einsum("bhk,bhk->bh", q_t, ksum)
        return (kv, ksum), (num, den)

    time_major = [jnp.moveaxis(x, 1, 0) for x in (q, k, v)]
    (kv, ksum), (num, den) = jax.lax.scan(step, tuple(state), time_major)
    num, den = jnp.moveaxis(num, 0, 1), jnp.moveaxis(den, 0, 1)
    out = _finish(num, den, normalize=normalize, scale=scale, eps=eps, dtype=v_bthv.dtype)
    return out, LinearState(kv, ksum)


def linear_attention_parallel(q_bthk, k_bthk, v_bthv, *, normalize=True, scale=1.0, eps=1e-6,
                              initial_state: LinearState | None = None):
    """Masked quadratic form: tril(q kᵀ) v plus the initial state's contribution."""
    q, k, v, state = _prepare(q_bthk, k_bthk, v_bthv, initial_state)
    t = q.shape[1]
    scores = jnp.einsum("bthk,bshk->bhts", q, k) * jnp.tril(jnp.ones((t, t), jnp.float32))
    num = jnp.einsum("bhts,bshv->bthv", scores, v) + jnp.einsum("bthk,bhkv->bthv", q, state.kv_bhkv)
    den = scores.sum(-1).transpose(0, 2, 1) + jnp.einsum("bthk,bhk->bth", q, state.k_bhk)
    final = LinearState(state.kv_bhkv + jnp.einsum("bthk,bthv->bhkv", k, v),
                        state.k_bhk + k.sum(1))
    return _finish(num, den, normalize=normalize, scale=scale, eps=eps, dtype=v_bthv.dtype), final


def linear_attention_chunked(q_bthk, k_bthk, v_bthv, *, chunk_size=64, normalize=True, scale=1.0,
                             eps=1e-6, initial_state: LinearState | None = None):
    """Quadratic inside chunks of `chunk_size`, state carried between chunks by a prefix sum.

    T need not divide by the chunk size: the tail is zero-padded, and zero keys and values add
    nothing to the state.
    """
    q, k, v, state = _prepare(q_bthk, k_bthk, v_bthv, initial_state)
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    c = max(1, min(chunk_size, t))
    n = -(-t // c)
    pad = [(0, 0), (0, n * c - t), (0, 0), (0, 0)]
    q, k, v = (jnp.pad(x, pad).reshape(b, n, c, h, x.shape[-1]) for x in (q, k, v))
    chunk_kv = jnp.einsum("bnchk,bnchv->bnhkv", k, v)
    chunk_k = k.sum(2)
    # State before each chunk: initial state plus all earlier chunks (exclusive prefix sum).
    kv_before = state.kv_bhkv[:, None] + jnp.cumsum(chunk_kv, axis=1) - chunk_kv
    k_before = state.k_bhk[:, None] + jnp.cumsum(chunk_k, axis=1) - chunk_k
    scores = jnp.einsum("bnchk,bnshk->bnhcs", q, k) * jnp.tril(jnp.ones((c, c), jnp.float32))
    num = (jnp.einsum("bnhcs,bnshv->bnchv", scores, v)
           + jnp.einsum("bnchk,bnhkv->bnchv", q, kv_before))
    den = scores.sum(-1).transpose(0, 1, 3, 2) + jnp.einsum("bnchk,bnhk->bnch", q, k_before)
    num, den = num.reshape(b, n * c, h, dv)[:, :t], den.reshape(b, n * c, h)[:, :t]
    final = LinearState(kv_before[:, -1] + chunk_kv[:, -1], k_before[:, -1] + chunk_k[:, -1])
    return _finish(num, den, normalize=normalize, scale=scale, eps=eps, dtype=v_bthv.dtype), final


def linear_attention_global(q_bthk, k_bthk, v_bthv, *, normalize=True, scale=1.0, eps=1e-6,
                            key_mask_bs=None):
    """Bidirectional form: every query reads q (Σ_j k_j v_jᵀ); masked keys are left out."""
    q, k, v, _ = _prepare(q_bthk, k_bthk, v_bthv, None)
    if key_mask_bs is not None:
        k = k * key_mask_bs.astype(jnp.float32)[:, :, None, None]
    num = jnp.einsum("bthk,bhkv->bthv", q, jnp.einsum("bshk,bshv->bhkv", k, v))
    den = jnp.einsum("bthk,bhk->bth", q, k.sum(1))
    return _finish(num, den, normalize=normalize, scale=scale, eps=eps, dtype=v_bthv.dtype)


def linear_attention(q_bthk, k_bthk, v_bthv, *, form="chunked", chunk_size=64, **kwargs):
    """Dispatch to one of FORMS; returns (out_bthv, final LinearState)."""
    if form == "recurrent":
        return linear_attention_recurrent(q_bthk, k_bthk, v_bthv, **kwargs)
    if form == "parallel":
        return linear_attention_parallel(q_bthk, k_bthk, v_bthv, **kwargs)
    if form == "chunked":
        return linear_attention_chunked(q_bthk, k_bthk, v_bthv, chunk_size=chunk_size, **kwargs)
    raise ValueError(f"unknown linear attention form {form!r}; known: {', '.join(FORMS)}")
