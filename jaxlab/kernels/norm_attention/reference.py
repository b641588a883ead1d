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
    weights, _ = _weights(q, k, q_scale, k_scale, key_mask_bs, qk_norm=qk_norm,
                          normalizer=normalizer, causal=causal, sm_scale=sm_scale, eps=eps,
                          segment_ids=segment_ids, length_scale=length_scale)
    total = weights.sum(-1, keepdims=True)
    probs = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
    return out.reshape(b, t, h, d).astype(q.dtype)


def row_log_normalizer(q, k, q_scale=None, k_scale=None, key_mask_bs=None, **options):
    """log Z_i [b, t, h], Z_i = Σ_j exp(s_ij) (softmax) or Σ_j softplus(s_ij) of the
    reference's logits (options: its keywords), 0 for a row that sees no key. ∂log Z_i/∂s_ij
    is row i's attention weight (softplus: sigmoid(s_ij)/Z_i), the term a flash backward's
    δ_i multiplies."""
    b, t, h, _ = q.shape
    weights, shift = _weights(q, k, q_scale, k_scale, key_mask_bs, **options)
    total = weights.sum(-1)
    log_z = jnp.where(total > 0, jnp.log(jnp.where(total > 0, total, 1.0)) + shift, 0.0)
    return jnp.moveaxis(log_z, 3, 1).reshape(b, t, h)


def _weights(q, k, q_scale, k_scale, key_mask_bs, *, qk_norm: str | None = None,
             normalizer: str = "softmax", causal: bool = False, sm_scale: float | None = None,
             eps: float = 1e-6, segment_ids=None, length_scale: bool = False):
    """(unnormalized weights [b, h_kv, h/h_kv, t, s], zero where a key is not seen; the log
    shift [b, h_kv, h/h_kv, t] taken out of them: the softmax's row max, else 0)."""
    b, t, h, d = q.shape
    s_len, h_kv = k.shape[1], k.shape[2]
    sm_scale = d ** -0.5 if sm_scale is None else sm_scale
    qn = head_norm(q, q_scale, qk_norm, eps).reshape(b, t, h_kv, h // h_kv, d)
    kn = head_norm(k, k_scale, qk_norm, eps)
    scores = jnp.einsum("btkgd,bskd->bkgts", qn, kn,
                        precision=jax.lax.Precision.HIGHEST) * sm_scale
    mask = attention_mask(t, s_len, causal=causal, key_mask_bs=key_mask_bs)
    if segment_ids is not None:
        q_ids, k_ids = segment_ids
        same = (q_ids[:, :, None] == k_ids[:, None, :])[:, None]
        mask = same if mask is None else mask & same
    visible = jnp.ones(scores.shape, bool) if mask is None else jnp.broadcast_to(
        mask[:, :, None], scores.shape)
    if length_scale:
        n_visible = visible.sum(-1, keepdims=True).astype(jnp.float32)
        scores = scores * (jnp.log(float(d)) * jnp.log(jnp.maximum(n_visible, 1.0)))
    if normalizer == "softmax":
        shift = jnp.max(jnp.where(visible, scores, -1e30), -1, keepdims=True)
        weights = jnp.exp(jnp.where(visible, scores, -jnp.inf) - shift)
    else:
        shift = jnp.zeros(scores.shape[:-1] + (1,), scores.dtype)
        weights = jax.nn.softplus(scores)
    return jnp.where(visible, weights, 0.0), shift[..., 0]
