"""Length-scaled Softplus attention with re-weighting (LSSA / LSSAR; Gao, Spratling & Gionfrida,
arXiv 2501.13428, §3).

Softmax is a positive map (exp) followed by an ℓ1 row normalisation; LSSA keeps the
normalisation, swaps the map for Softplus, compares L2-normalised queries and keys (so q̂·k̂ is a
cosine in [−1, 1]) and scales each row by the log of the number of keys it sees:

    s_ij = log(d) · log(n_i) · q̂_i·k̂_j       n_i = keys visible to query i (causal: i + 1),
                                               d = head dim; natural logs
    a_ij = m_ij · softplus(s_ij) / Σ_j' m_ij' · softplus(s_ij')        (m: 0/1 mask, fp32)

LSSAR then sharpens each row: weights above uniform (a > 1/n) are kept, shifted and raised to
a power p, and the row is ℓ1-normalised again:

    r_ij = m_ij · relu(n_i · a_ij − o_i)^p,   a'_ij = r_ij / Σ_j' r_ij'
    o_i = 0 for rows that see at most 3 keys, else 1 (the paper's offset matrix, whose first
    three rows are 0)

The paper reports p = 15 best beyond the training length (p = 3 at it). Here p = 1 switches the
re-weighting off (LSSA), and `reweight_shift=False` gives the unshifted a^p / Σ a^p. A row
whose weights are all uniform has nothing above 1/n; it keeps the unshifted form instead of
going to zero, so every row with a visible key sums to 1.

Sources: the formulas as written out in the paper's summaries and reviews (the arXiv HTML's §3
could not be read here): papernotes.org's ICML 2026 notes on the paper, its OpenReview reviews
quoting "N is an L×L matrix where each element in row i is equal to i", and "log d log N" in
summaries of v1. The natural log is an assumption. Softplus is linear for large logits and the
logits are bounded by log(d)·log(n), so no running max is needed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlab.ops.attention import attention_mask

POSITIVE_MAPS = {"softplus": jax.nn.softplus, "exp": jnp.exp}
_TINY = float(jnp.finfo(jnp.float32).tiny)


def length_scale(n_visible: jax.Array, head_dim: int) -> jax.Array:
    """κ(n) = log(d) · log(n): 0 for a row that sees one key, growing with the keys seen."""
    return jnp.log(float(head_dim)) * jnp.log(jnp.maximum(n_visible, 1.0))


def l2_normalize(x: jax.Array) -> jax.Array:
    """x / ‖x‖ over the last axis in float32 (a zero vector stays zero)."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))


def _power_rows(x: jax.Array, p: float, keep: jax.Array) -> jax.Array:
    """Row-wise x^p / Σ x^p over `keep`; dividing by the row max first keeps x^p from
    overflowing (p = 15 of a shifted weight near n) or underflowing."""
    row_max = jnp.max(jnp.where(keep, x, 0.0), axis=-1, keepdims=True)
    relative = x / jnp.where(row_max > 0, row_max, 1.0)
    positive = keep & (relative > 0)
    # where() on both sides keeps the gradient of x^p finite at the zero entries when p < 1.
    powered = jnp.where(positive, jnp.where(positive, relative, 1.0) ** p, 0.0)
    return powered / jnp.maximum(powered.sum(-1, keepdims=True), _TINY)


def reweight(weights: jax.Array, p: float, mask: jax.Array, *, shift: bool = True) -> jax.Array:
    """LSSAR's sharpening of ℓ1-normalised rows `weights` [..., t, s] (see the module doc)."""
    if p == 1.0:
        return weights
    if p <= 0:
        raise ValueError(f"re-weighting power p must be positive, got {p}")
    mask = jnp.broadcast_to(mask, weights.shape)
    if not shift:
        return _power_rows(weights, p, mask)
    n_visible = mask.sum(-1, keepdims=True).astype(jnp.float32)
    offset = jnp.where(n_visible <= 3, 0.0, 1.0)
    shifted = jnp.maximum(n_visible * weights - offset, 0.0)
    sharpened = _power_rows(shifted, p, mask)
    has_survivor = jnp.any(mask & (shifted > 0), axis=-1, keepdims=True)
    return jnp.where(has_survivor, sharpened, _power_rows(weights, p, mask))


def softplus_attention_weights(q_bthd, k_bshd, *, mask_b1ts=None, reweight_p=1.0,
                               reweight_shift=True, positive_map="softplus", scale=None,
                               normalize_qk=True):
    """Attention weights [b, h, t, s] in float32; masked entries are exactly 0.

    `scale` (a float) replaces the length scale κ(n) with a constant; `normalize_qk=False`
    compares raw q·k (with positive_map="exp" and scale=d^-1/2 this is softmax attention).
    Rows with no visible key are all zeros.
    """
    d = q_bthd.shape[-1]
    t, s = q_bthd.shape[1], k_bshd.shape[1]
    mask = (jnp.ones((1, 1, t, s), bool) if mask_b1ts is None else mask_b1ts.astype(bool))
    if normalize_qk:
        q_bthd, k_bshd = l2_normalize(q_bthd), l2_normalize(k_bshd)
    dots = jnp.einsum("bthd,bshd->bhts", q_bthd, k_bshd, preferred_element_type=jnp.float32)
    if scale is None:
        kappa = length_scale(mask.sum(-1, keepdims=True).astype(jnp.float32), d)
    else:
        kappa = scale
    positive = jnp.where(mask, POSITIVE_MAPS[positive_map](dots.astype(jnp.float32) * kappa), 0.0)
    total = positive.sum(-1, keepdims=True)
    weights = positive / jnp.where(total > 0, total, 1.0)
    return reweight(weights, reweight_p, mask, shift=reweight_shift)


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
