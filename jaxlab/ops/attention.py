"""Attention math on [batch, time, heads, head_dim] arrays."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def attention_mask(q_len: int, k_len: int, *, causal: bool,
                   key_mask_bs: jax.Array | None = None) -> jax.Array | None:
    """Boolean [b or 1, 1, t, s] mask, True where a query may attend; None when nothing is masked.

    Causal alignment is to the end: query i sees keys up to i + (k_len - q_len), so a short
    query block over a longer key cache stays causal.
    """
    mask = None
    if causal:
        q_pos = jnp.arange(q_len)[:, None] + (k_len - q_len)
        mask = (q_pos >= jnp.arange(k_len)[None, :])[None, None]
    if key_mask_bs is not None:
        keys = key_mask_bs.astype(bool)[:, None, None, :]
        mask = keys if mask is None else mask & keys
    return mask


def cudnn_flash_takes(q_bthd, k_bshd, v_bshd, *, causal: bool, key_mask_bs=None) -> bool:
    """Whether cuDNN's flash kernel (jax.nn.dot_product_attention(implementation="cudnn")) on a
    GPU computes this call as we define it: one 16-bit dtype, a head dim that is a multiple of
    8 up to 128, no padding mask and, when causal, as many queries as keys (its causal mask
    starts at the first key, ours at the end). The caller checks that the backend is a GPU."""
    dtypes = {q_bthd.dtype, k_bshd.dtype, v_bshd.dtype}
    d = q_bthd.shape[-1]
    return (key_mask_bs is None and (q_bthd.shape[1] == k_bshd.shape[1] or not causal)
            and len(dtypes) == 1 and dtypes <= {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)}
            and d % 8 == 0 and d <= 128)


def softmax_attention(q_bthd: jax.Array, k_bshd: jax.Array, v_bshd: jax.Array, *,
                      causal: bool = False, key_mask_bs: jax.Array | None = None,
                      scale: float | None = None, softcap: float = 0.0,
                      fused: bool = True) -> jax.Array:
    """softmax(q kᵀ · scale + mask) v with grouped-query heads.

    With `fused` (default), inputs with no padding mask, no soft-cap and, when causal, as many
    queries as keys go to jax.nn.dot_product_attention (its causal mask starts at the first key
    and its fully masked rows differ from ours, hence those conditions): float32 inputs on any
    backend, 16-bit inputs only to cuDNN's flash kernel on a GPU, which keeps the logits in
    float32 (XLA's own 16-bit path would round them). Everything else takes the einsum path.

    softcap > 0 bounds the logits smoothly to (−softcap, softcap) with softcap·tanh(logits/softcap)
    (Gemma 2's attention logit soft-capping).

    k and v may have fewer heads than q (GQA/MQA): q head h reads kv head h // (H / H_kv).
    Logits and softmax run in float32 whatever the input dtype; a query whose keys are all
    masked returns zeros instead of NaN.
    """
    b, t, h, d = q_bthd.shape
    s, h_kv = k_bshd.shape[1], k_bshd.shape[2]
    if h % h_kv:
        raise ValueError(f"query heads {h} must be a multiple of key/value heads {h_kv}")
    scale = d ** -0.5 if scale is None else scale
    if fused and key_mask_bs is None and softcap == 0 and (t == s or not causal):
        dtypes = {q_bthd.dtype, k_bshd.dtype, v_bshd.dtype}
        if dtypes == {jnp.dtype(jnp.float32)}:
            return jax.nn.dot_product_attention(q_bthd, k_bshd, v_bshd, scale=scale,
                                                is_causal=causal)
        if jax.default_backend() == "gpu" and cudnn_flash_takes(q_bthd, k_bshd, v_bshd,
                                                                causal=causal):
            try:
                return jax.nn.dot_product_attention(q_bthd, k_bshd, v_bshd, scale=scale,
                                                    is_causal=causal, implementation="cudnn")
            except (ValueError, NotImplementedError, RuntimeError):
                pass  # shapes or dtype cuDNN refuses: the einsum path below
    q_btkgd = q_bthd.reshape(b, t, h_kv, h // h_kv, d)
    logits_bkgts = jnp.einsum("btkgd,bskd->bkgts", q_btkgd, k_bshd,  # float64 stays float64
                              preferred_element_type=jnp.promote_types(q_bthd.dtype, jnp.float32)
                              ) * scale
    if softcap > 0:
        logits_bkgts = softcap * jnp.tanh(logits_bkgts / softcap)
    mask = attention_mask(t, s, causal=causal, key_mask_bs=key_mask_bs)
    if mask is not None:
        mask_b11ts = mask[:, :, None]
        logits_bkgts = jnp.where(mask_b11ts, logits_bkgts, jnp.finfo(jnp.float32).min)
    probs_bkgts = jax.nn.softmax(logits_bkgts, axis=-1)
    if mask is not None:
        probs_bkgts = jnp.where(mask_b11ts, probs_bkgts, 0.0)
    out_btkgd = jnp.einsum("bkgts,bskd->btkgd", probs_bkgts.astype(v_bshd.dtype), v_bshd)
    return out_btkgd.reshape(b, t, h, d)


def rope_angles(positions_bt: jax.Array, head_dim: int, base: float = 10000.0
                ) -> tuple[jax.Array, jax.Array]:
    """cos and sin of shape [b, t, 1, head_dim // 2] for rotary embeddings."""
    inv_freq = base ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def apply_rope(x_bthd: jax.Array, positions_bt: jax.Array, base: float = 10000.0) -> jax.Array:
    """Rotates pairs (x[i], x[i + d/2]) by angle position · base^(-2i/d) (the 'rotate half' layout)."""
    d = x_bthd.shape[-1]
    if d % 2:
        raise ValueError(f"rotary embeddings need an even head dim, got {d}")
    cos, sin = rope_angles(positions_bt, d, base)
    x1, x2 = jnp.split(x_bthd.astype(jnp.promote_types(x_bthd.dtype, jnp.float32)), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_bthd.dtype)
