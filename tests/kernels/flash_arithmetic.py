"""The yardstick of the Triton norm-attention kernels in 16 bits: exact float32 math with the
roundings the kernels make by design, and only those.

A flash kernel feeds its matrix units 16-bit operands: the normalized q tile (with the logit
scale, and log2 e for softmax, folded in), the normalized k tile, the unnormalized weights
before P·V, and dS before dS·K and dSᵀ·Q; the products accumulate in float32. Its backward
takes δ_i = dO_i · O_i of the 16-bit output it wrote. The float32 reference makes none of these
roundings, and where the math sums many of them (a gain's gradient over every row) their error
can pass the 16-bit tolerance while the kernel computes exactly what it should. Where the
reference check fails, `assert_matches_reference` also accepts a kernel that matches these
answers to the tolerance; a mistake in the kernel's math would miss both. In float32 they are
the reference's answers (tests/kernels/test_norm_attention.py checks that).
"""
import jax
import jax.numpy as jnp

from jaxlab.kernels.norm_attention.pallas import LOG2_E
from jaxlab.kernels.norm_attention.reference import head_norm, logit_factors, visible_keys
from tests.kernels.helpers import rounding_to

HIGHEST = jax.lax.Precision.HIGHEST


def flash_answers(mask, options, dtype):
    """yardstick(args, cotangent, kernel output) for `assert_matches_reference`, args
    (q, k, v, q_scale, k_scale) and options the kernel's keywords."""
    def answers(args, cotangent, kernel_out):
        return rounded_flash(*args, mask, cotangent, kernel_out, dtype=dtype, **options)
    return answers


def rounded_flash(q, k, v, q_scale, k_scale, key_mask_bs, cotangent, kernel_out, *, dtype,
                  qk_norm=None, normalizer="softmax", causal=False, sm_scale=None, eps=1e-6,
                  segment_ids=None, length_scale=False):
    """[out, dq, dk, dv, dq_scale, dk_scale] of the kernels' arithmetic for the cotangent (the
    gains' gradients 0 without a qk-norm); δ is taken of kernel_out, as the kernels take it."""
    f32 = lambda x: x.astype(jnp.float32)
    rounded = rounding_to(dtype)
    b, t, h, d = q.shape
    h_kv = k.shape[2]
    per_group = lambda x: f32(x).reshape(b, t, h_kv, h // h_kv, d)  # [b, t, h_kv, group, d]
    rows_last = lambda x: jnp.moveaxis(x[..., 0], 3, 1)[..., None]  # [.., t, 1] -> [b, t, .., 1]
    visible = visible_keys(q.shape, k.shape, causal=causal, key_mask_bs=key_mask_bs,
                           segment_ids=segment_ids)
    factor = logit_factors(visible, d, sm_scale, length_scale)
    base = LOG2_E if normalizer == "softmax" else 1.0  # softmax kernels work in base 2
    scores = lambda x, y: jnp.einsum("btkgd,bskd->bkgts", x, y, precision=HIGHEST)
    norm = lambda x, gain: head_norm(x, gain, qk_norm, eps)
    if qk_norm is None:  # the q tile stays as it came; the scores take the scale
        q_tile, k_tile = per_group(q), f32(k)
        s = scores(q_tile, k_tile) * factor * base
    else:
        q_tile = rounded(norm(per_group(q), q_scale) * rows_last(factor) * base)
        k_tile = rounded(norm(k, k_scale))
        s = scores(q_tile, k_tile)

    if normalizer == "softmax":
        weights = jnp.exp2(s - jnp.max(jnp.where(visible, s, -1e30), -1, keepdims=True))
    else:
        weights = jax.nn.softplus(s)
    weights = jnp.where(visible, weights, 0.0)
    total = weights.sum(-1, keepdims=True)
    inverse = jnp.where(total > 0, 1 / jnp.where(total > 0, total, 1.0), 0.0)
    out = jnp.einsum("bkgts,bskd->btkgd", rounded(weights), f32(v), precision=HIGHEST)
    out = (out * rows_last(inverse)).reshape(q.shape).astype(dtype)

    d_out = per_group(cotangent)
    delta = jnp.moveaxis(jnp.sum(d_out * per_group(kernel_out), -1), 1, 3)[..., None]
    d_probs = jnp.einsum("btkgd,bskd->bkgts", d_out, f32(v), precision=HIGHEST)
    probs = weights * inverse
    if normalizer == "softmax":
        slope = probs
    else:  # ∂softplus(s)/∂s over the row's ℓ1 sum
        slope = jnp.where(visible, jax.nn.sigmoid(s), 0.0) * inverse
    d_scores = slope * (d_probs - delta)  # ∂loss/∂(true logits)
    d_q = jnp.einsum("bkgts,bskd->btkgd", rounded(d_scores), k_tile,
                     precision=HIGHEST) * rows_last(factor)
    if qk_norm is None:  # the dK/dV kernel scales dS before its product
        d_k = jnp.einsum("bkgts,btkgd->bskd", rounded(d_scores * factor * base), q_tile,
                         precision=HIGHEST) / base
    else:
        d_k = jnp.einsum("bkgts,btkgd->bskd", rounded(d_scores), q_tile, precision=HIGHEST) / base
    d_v = jnp.einsum("bkgts,btkgd->bskd", rounded(probs), d_out, precision=HIGHEST)
    gains = [jnp.zeros_like(q_scale), jnp.zeros_like(k_scale)]  # no norm: the gains are unused
    if qk_norm is not None:  # the norms' backward runs in float32
        _, q_norm_vjp = jax.vjp(norm, per_group(q), q_scale)
        _, k_norm_vjp = jax.vjp(norm, f32(k), k_scale)
        (d_q, gains[0]), (d_k, gains[1]) = q_norm_vjp(d_q), k_norm_vjp(d_k)
    return [out, d_q.reshape(q.shape).astype(dtype), d_k.astype(dtype), d_v.astype(dtype)] + gains
