"""XLA reference: φ on q and k, causal linear attention (jaxlab.ops), optional output RMSNorm.

With normalize=False and output_norm="rms" this is TransNormer's NormAttention.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlab.ops.linear_attention import FEATURE_MAPS, linear_attention_parallel
from jaxlab.ops.norms import compute_dtype

KERNEL_FEATURE_MAPS = ("elu1", "relu", "identity")


def output_rms_norm(o, gain, eps):
    """TransNormer's output norm: RMSNorm of each head's output [..., dv] times `gain`."""
    o = o.astype(compute_dtype(o.dtype))
    return o * jax.lax.rsqrt(jnp.square(o).mean(-1, keepdims=True) + eps) * gain


def chunked_linear_attention_reference(q, k, v, gain=None, *, feature_map: str = "elu1",
                                       normalize: bool = True, scale: float = 1.0,
                                       eps: float = 1e-6, output_norm: bool = False,
                                       norm_eps: float = 1e-6):
    """q, k [b, t, h, dk], v [b, t, h, dv] -> [b, t, h, dv] (float32 math, or float64 for
    float64 inputs; q's dtype out)."""
    phi = FEATURE_MAPS[feature_map]
    work = compute_dtype(q.dtype)
    out, _ = linear_attention_parallel(phi(q.astype(work)), phi(k.astype(work)), v,
                                       normalize=normalize, scale=scale, eps=eps)
    out = out.astype(work)
    if output_norm:
        out = output_rms_norm(out, 1.0 if gain is None else gain.astype(work), norm_eps)
    return out.astype(q.dtype)
