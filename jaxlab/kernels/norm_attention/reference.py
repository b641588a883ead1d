"""XLA reference for fused norm-attention, float32 throughout; the oracle for the kernels.

    q̂ = norm(q)·q_scale, k̂ = norm(k)·k_scale          (over head_dim; skipped when qk_norm=None)
    s = q̂ k̂ᵀ · sm_scale, masked (causal, key padding)
    softmax:  p = exp(s) / Σ exp(s)
    softplus: p = softplus(s) / Σ softplus(s)          (ℓ1 row normalization, no max needed)
    out = p v                                            (rows with no visible key give 0)

A query sees a key only where both carry the same segment id (packed sequences), when ids are
given. With length_scale, row i's logits are also multiplied by log(d)·log(n_i), n_i the keys
it sees: LSSA's scale (jaxlab.ops.softplus_attention), which with qk_norm="rms" and
sm_scale=1/d makes the logits log(d)·log(n)·cos(q, k).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlab.ops.attention import attention_mask

NORMALIZERS = ("softmax", "softplus")
QK_NORMS = (None, "rms", "layer")


def head_norm(x, scale, kind: str | None, eps: float):
    """RMS- or LayerNorm over the last axis (head_dim) times `scale`, in float32."""
    x = x.astype(jnp.float32)
    if kind is None:
        return x
    if kind == "layer":
        x = x - x.mean(-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps)
    return x if scale is None else x * scale.astype(jnp.float32)


def fused_norm_attention_reference(q, k, v, q_scale=None, k_scale=None, key_mask_bs=None, *,
                                   qk_norm: str | None = None, normalizer: str = "softmax",
                                   causal: bool = False, sm_scale: float | None = None,
                                   eps: float = 1e-6, segment_ids=None,
                                   length_scale: bool = False):
    """q [b, t, h, d], k and v [b, s, h_kv, d] with h a multiple of h_kv -> [b, t, h, d];
    segment_ids: None or (query ids [b, t], key ids [b, s])."""
    b, t, h, d = q.shape
    h_kv = k.shape[2]
    visible = visible_keys(q.shape, k.shape, causal=causal, key_mask_bs=key_mask_bs,
                           segment_ids=segment_ids)
    qn = head_norm(q, q_scale, qk_norm, eps).reshape(b, t, h_kv, h // h_kv, d)
    kn = head_norm(k, k_scale, qk_norm, eps)
    scores = jnp.einsum("btkgd,bskd->bkgts", qn, kn, precision=jax.lax.Precision.HIGHEST)
    scores = scores * logit_factors(visible, d, sm_scale, length_scale)
    if normalizer == "softmax":
        shift = jnp.max(jnp.where(visible, scores, -1e30), -1, keepdims=True)
        weights = jnp.exp(jnp.where(visible, scores, -jnp.inf) - shift)
    else:
        weights = jax.nn.softplus(scores)
    weights = jnp.where(visible, weights, 0.0)
    total = weights.sum(-1, keepdims=True)
    probs = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
    return out.reshape(b, t, h, d).astype(q.dtype)


def visible_keys(q_shape, k_shape, *, causal: bool = False, key_mask_bs=None, segment_ids=None):
    """[b, h_kv, h/h_kv, t, s] bools: which keys each query sees (causal end-aligned, the key
    mask, equal segment ids)."""
    b, t, h, _ = q_shape
    s_len, h_kv = k_shape[1], k_shape[2]
    mask = attention_mask(t, s_len, causal=causal, key_mask_bs=key_mask_bs)
    if segment_ids is not None:
        q_ids, k_ids = segment_ids
        same = (q_ids[:, :, None] == k_ids[:, None, :])[:, None]
        mask = same if mask is None else mask & same
    shape = (b, h_kv, h // h_kv, t, s_len)
    return jnp.ones(shape, bool) if mask is None else jnp.broadcast_to(mask[:, :, None], shape)


def logit_factors(visible, head_dim: int, sm_scale: float | None, length_scale: bool):
    """[b, h_kv, h/h_kv, t, 1]: what each query row's q·k products are multiplied by, sm_scale
    (default head_dim^-½), with length_scale also log d · log n_i, n_i the keys row i sees."""
    sm_scale = head_dim ** -0.5 if sm_scale is None else sm_scale
    factors = jnp.full(visible.shape[:-1] + (1,), sm_scale, jnp.float32)
    if length_scale:
        n_visible = visible.sum(-1, keepdims=True).astype(jnp.float32)
        factors = factors * (jnp.log(float(head_dim)) * jnp.log(jnp.maximum(n_visible, 1.0)))
    return factors
