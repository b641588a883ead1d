"""XLA reference: h = x (+ residual); y = norm(h) · scale (+ bias), statistics in float32."""
from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS = ("rms", "layer")


def row_stats(h32: jax.Array, kind: str, eps: float) -> tuple[jax.Array, jax.Array]:
    """(mean, rstd) per row; the mean is 0 for RMSNorm."""
    if kind == "rms":
        mean = jnp.zeros(h32.shape[:-1] + (1,), jnp.float32)
    else:
        mean = h32.mean(-1, keepdims=True)
    var = jnp.square(h32 - mean).mean(-1, keepdims=True)
    return mean, jax.lax.rsqrt(var + eps)


def fused_norm_reference(x, scale, bias=None, residual=None, *, kind: str = "rms",
                         eps: float = 1e-6):
    """Returns y, or (y, h) when a residual is added (h is the new residual stream)."""
    h = x if residual is None else x + residual
    h32 = h.astype(jnp.float32)
    mean, rstd = row_stats(h32, kind, eps)
    y = (h32 - mean) * rstd * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    y = y.astype(x.dtype)
    return y if residual is None else (y, h)
