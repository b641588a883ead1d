"""Length-scaled Softplus attention with re-weighting (LSSA / LSSAR; Gao & Spratling, arXiv 2501.13428).

Softmax is a positive map (exp) followed by an ℓ1 row normalisation; LSSA keeps the
normalisation and swaps the map for Softplus, with a scale that grows with the number of keys a
query sees:

    s_ij = κ(n_i) · q_i·k_j                   n_i = keys visible to query i (causal: i + 1)
    a_ij = m_ij · softplus(s_ij) / Σ_j' m_ij' · softplus(s_ij')        (m: 0/1 mask, fp32)
    LSSAR: a'_ij = a_ij^p / Σ_j' a_ij'^p      (p = 1 is the identity; p > 1 sharpens)

What the public material settles: the Softplus map, the ℓ1 normalisation, a row-dependent scale
from "invariance entropy" that depends on n_i, and a power-law re-weighting usable at inference.
What it does not (the paper's §3 could not be read offline): the exact κ. We use the
entropy-invariance scale of the log-n attention-scaling literature,
    κ(n) = max(1, log n / log L_train) / √d,
which is the usual 1/√d up to the training length L_train and grows as log n beyond it, so the
row entropy stays roughly constant as sequences get longer. Swap `length_scale` if the paper's
form differs. Softplus is linear for large logits, so no running max is needed.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxlab.ops.attention import attention_mask

POSITIVE_MAPS = {"softplus": jax.nn.softplus, "exp": jnp.exp}


def length_scale(n_visible: jax.Array, head_dim: int, train_length: int | None) -> jax.Array:
    """κ(n) = max(1, log n / log L_train) / √d; just 1/√d when train_length is None."""
    base = head_dim ** -0.5
    if train_length is None:
        return jnp.full(n_visible.shape, base, jnp.float32)
    growth = jnp.log(jnp.maximum(n_visible, 1.0)) / math.log(max(train_length, 2))
    return jnp.maximum(growth, 1.0) * base


def reweight(weights: jax.Array, p: float, mask: jax.Array) -> jax.Array:
    """Row-wise a^p / Σ a^p; dividing by the row max first keeps a^p from underflowing."""
    if p == 1.0:
        return weights
    if p <= 0:
        raise ValueError(f"re-weighting power p must be positive, got {p}")
    row_max = jnp.max(weights, axis=-1, keepdims=True)
    relative = weights / jnp.where(row_max > 0, row_max, 1.0)
    positive = mask & (relative > 0)
    # where() on both sides keeps the gradient of x^p finite at the zero entries when p < 1.
    powered = jnp.where(positive, jnp.where(positive, relative, 1.0) ** p, 0.0)
    return powered / jnp.maximum(powered.sum(-1, keepdims=True), jnp.finfo(jnp.float32).tiny)


def softplus_attention_weights(q_bthd, k_bshd, *, mask_b1ts=None, train_length=None,
                               reweight_p=1.0, positive_map="softplus", scale=None):
    """Attention weights [b, h, t, s] in float32; masked entries are exactly 0.

    `scale` (a float) replaces the length-dependent κ with a constant. Rows with no visible key
    are all zeros.
    """
    d = q_bthd.shape[-1]
    t, s = q_bthd.shape[1], k_bshd.shape[1]
    mask = (jnp.ones((1, 1, t, s), bool) if mask_b1ts is None else mask_b1ts.astype(bool))
    dots = jnp.einsum("bthd,bshd->bhts", q_bthd, k_bshd, preferred_element_type=jnp.float32)
    if scale is None:
        n_visible = mask.sum(-1, keepdims=True).astype(jnp.float32)
        kappa = length_scale(n_visible, d, train_length)
    else:
        kappa = scale
    positive = jnp.where(mask, POSITIVE_MAPS[positive_map](dots.astype(jnp.float32) * kappa), 0.0)
    total = positive.sum(-1, keepdims=True)
    weights = positive / jnp.where(total > 0, total, 1.0)
    return reweight(weights, reweight_p, mask)


def softplus_attention(q_bthd, k_bshd, v_bshd, *, causal=False, key_mask_bs=None, **kwargs):
    """LSSA(R) output [b, t, h, d]; k/v may have fewer heads than q (grouped queries).

    Keyword arguments go to `softplus_attention_weights`; causal alignment is to the end, as in
    `softmax_attention`.
    """
    h, h_kv = q_bthd.shape[2], k_bshd.shape[2]
    k_bshd = jnp.repeat(k_bshd, h // h_kv, axis=2)
    v_bshd = jnp.repeat(v_bshd, h // h_kv, axis=2)
    mask = attention_mask(q_bthd.shape[1], k_bshd.shape[1], causal=causal, key_mask_bs=key_mask_bs)
    weights = softplus_attention_weights(q_bthd, k_bshd, mask_b1ts=mask, **kwargs)
    out = jnp.einsum("bhts,bshd->bthd", weights, v_bshd.astype(jnp.float32))
    return out.astype(v_bshd.dtype)
