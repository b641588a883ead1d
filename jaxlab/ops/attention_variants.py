"""Smaller attention variants: inverse-distance weighting, block-diagonal softmax, SLA's
depthwise convolution, linear self-attention (LSA) and the gain-free RMS output norm.

Arrays are [batch, time, heads, dim]; masks follow `jaxlab.ops.attention.attention_mask`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlab.ops.attention import attention_mask, softmax_attention


def idw_attention(q_bthd, k_bshd, v_bshd, *, causal=False, key_mask_bs=None, eps=1e-6):
    """Inverse distance weighting: softmax_j(−log(‖q_i − k_j‖ + eps)), so a_ij ∝ 1/(‖q_i − k_j‖ + eps).

    The distance comes from ‖q‖² + ‖k‖² − 2 q·k (clipped at 0), with a tiny floor inside the root
    so its gradient stays finite when a query sits on a key.
    """
    h, h_kv = q_bthd.shape[2], k_bshd.shape[2]
    q = q_bthd.astype(jnp.float32)
    k = jnp.repeat(k_bshd, h // h_kv, axis=2).astype(jnp.float32)
    v = jnp.repeat(v_bshd, h // h_kv, axis=2)
    squared = (jnp.sum(q * q, -1).transpose(0, 2, 1)[..., None]
               + jnp.sum(k * k, -1).transpose(0, 2, 1)[:, :, None, :]
               - 2 * jnp.einsum("bthd,bshd->bhts", q, k))
    distance = jnp.sqrt(jnp.maximum(squared, 0.0) + 1e-12)
    logits = -jnp.log(distance + eps)
    mask = attention_mask(q.shape[1], k.shape[1], causal=causal, key_mask_bs=key_mask_bs)
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        weights = jnp.where(mask, weights, 0.0)
    return jnp.einsum("bhts,bshd->bthd", weights, v.astype(jnp.float32)).astype(v.dtype)


def block_diagonal_attention(q_bthd, k_bthd, v_bthd, *, block_size=64, causal=False,
                             key_mask_bs=None):
    """Softmax attention inside non-overlapping blocks of `block_size` tokens (TransNormer's
    DiagAttention); no token sees another block. T need not divide by the block size."""
    b, t, h, d = q_bthd.shape
    c = min(block_size, t)
    n = -(-t // c)
    pad = n * c - t
    valid = jnp.ones((b, t), bool) if key_mask_bs is None else key_mask_bs.astype(bool)
    valid = jnp.pad(valid, [(0, 0), (0, pad)]).reshape(b * n, c)

    def blocks(x):
        x = jnp.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)])
        return x.reshape(b * n, c, x.shape[2], x.shape[3])

    out = softmax_attention(blocks(q_bthd), blocks(k_bthd), blocks(v_bthd), causal=causal,
                            key_mask_bs=valid)
    return out.reshape(b, n * c, h, d)[:, :t]


def causal_depthwise_conv(x_btc, kernel_kc, *, history_bkc=None):
    """y_t = Σ_i kernel[i] · x_{t−K+1+i} per channel; `history` holds the K−1 inputs before x
    (zeros when None), which lets decode continue a sequence chunk by chunk."""
    k = kernel_kc.shape[0]
    if history_bkc is None:
        history_bkc = jnp.zeros((x_btc.shape[0], k - 1, x_btc.shape[2]), x_btc.dtype)
    padded = jnp.concatenate([history_bkc.astype(x_btc.dtype), x_btc], axis=1)
    t = x_btc.shape[1]
    return sum(padded[:, i:i + t] * kernel_kc[i] for i in range(k))


def same_depthwise_conv(x_btc, kernel_kc):
    """Centred (non-causal) 1-D depthwise convolution with zero padding, odd kernel length."""
    k = kernel_kc.shape[0]
    padded = jnp.pad(x_btc, [(0, 0), (k // 2, k // 2), (0, 0)])
    t = x_btc.shape[1]
    return sum(padded[:, i:i + t] * kernel_kc[i] for i in range(k))


def grid_depthwise_conv(x_bhwc, kernel_kkc):
    """Centred 2-D depthwise convolution over a token grid (SLA on images)."""
    k = kernel_kkc.shape[0]
    padded = jnp.pad(x_bhwc, [(0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)])
    hh, ww = x_bhwc.shape[1:3]
    return sum(padded[:, i:i + hh, j:j + ww] * kernel_kkc[i, j] for i in range(k) for j in range(k))


def sla_attention_quadratic(q_bthk, k_bthk, v_bthv, *, causal, eps=1e-6):
    """SLA's (QKᵀ)V ordering: weights relu(q)·relu(k), rows divided by their sum plus eps.

    q and k arrive already through ReLU; the linear-time Q(KᵀV) ordering is
    `jaxlab.ops.linear_attention` with normalize=True and the same eps.
    """
    q, k, v = (x.astype(jnp.float32) for x in (q_bthk, k_bthk, v_bthv))
    scores = jnp.einsum("bthk,bshk->bhts", q, k)
    if causal:
        t = q.shape[1]
        scores = scores * jnp.tril(jnp.ones((t, t), jnp.float32))
    out = jnp.einsum("bhts,bshv->bthv", scores, v) / (scores.sum(-1).transpose(0, 2, 1)[..., None] + eps)
    return out.astype(v_bthv.dtype)


def rms_normalize(x, axis=-1, eps=1e-6):
    """x / rms(x) with no gain (TransNormer's output norm); eps sits inside the root."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=axis, keepdims=True) + eps)).astype(x.dtype)


def lsa_update(e_bnd, wq, wk, wv, wp, *, normalizer):
    """One linear self-attention layer on tokens e (von Oswald et al. 2023), no softmax, no mask:

        e_j ← e_j + (1/normalizer) · Σ_i (P V e_i) ((K e_i)·(Q e_j))
    """
    q, k, v = e_bnd @ wq.T, e_bnd @ wk.T, e_bnd @ wv.T
    scores = jnp.einsum("bjd,bid->bji", q, k)
    return e_bnd + jnp.einsum("bji,bid->bjd", scores, v) @ wp.T / normalizer


def gd_construction(x_dim: int, y_dim: int, learning_rate: float):
    """Weights (wq, wk, wv, wp) for which `lsa_update` performs one gradient-descent step.

    With W₀ = 0 and loss 1/(2N) Σ‖W x_i − y_i‖², one GD step of size η gives
    ŷ_q = (η/N) Σ_i y_i x_iᵀ x_q. Q and K read x; V reads y; P writes −η·v into the y slot, so
    the query's y slot (zero on input) becomes −ŷ_q when normalizer = N.
    """
    d = x_dim + y_dim
    read_x = jnp.zeros((d, d)).at[:x_dim, :x_dim].set(jnp.eye(x_dim))
    read_y = jnp.zeros((d, d)).at[x_dim:, x_dim:].set(jnp.eye(y_dim))
    return read_x, read_x, read_y, -learning_rate * jnp.eye(d)


def gd_step_prediction(x_bnd, y_bne, x_query_bd, learning_rate: float):
    """ŷ_q after one GD step of size η from W = 0: (η/N) Σ_i y_i (x_i·x_q)."""
    n = x_bnd.shape[1]
    return learning_rate / n * jnp.einsum("bne,bn->be", y_bne, jnp.einsum("bnd,bd->bn", x_bnd, x_query_bd))
