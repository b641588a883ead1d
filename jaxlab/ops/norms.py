"""Normalizations over the last axis, returned in the input dtype.

Statistics are computed in float32, or in the input dtype when that is wider (float64 keeps the
Pre-LN ≡ Pre-RMSNorm ≡ Pre-CRMSNorm equivalence tests exact to 1e-10).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def compute_dtype(dtype) -> jnp.dtype:
    """float32, or the input dtype when it is wider (float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def _affine(y: jax.Array, scale: jax.Array | None, bias: jax.Array | None) -> jax.Array:
    if scale is not None:
        y = y * scale.astype(y.dtype)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return y


def layer_norm(x: jax.Array, scale: jax.Array | None = None, bias: jax.Array | None = None,
               eps: float = 1e-6) -> jax.Array:
    """LayerNorm over the last axis: (x − mean)/√(var + eps) · scale + bias, computed in at
    least float32 and returned in x's dtype (Ba et al., 2016)."""
    xc = x.astype(compute_dtype(x.dtype))
    mean = xc.mean(-1, keepdims=True)
    var = jnp.square(xc - mean).mean(-1, keepdims=True)
    y = (xc - mean) * jax.lax.rsqrt(var + eps)
    return _affine(y, scale, bias).astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array | None = None, eps: float = 1e-6) -> jax.Array:
    """RMSNorm over the last axis: x/√(mean(x²) + eps) · scale, computed in at least float32
    and returned in x's dtype (Zhang & Sennrich, 2019)."""
    xc = x.astype(compute_dtype(x.dtype))
    y = xc * jax.lax.rsqrt(jnp.square(xc).mean(-1, keepdims=True) + eps)
    return _affine(y, scale, None).astype(x.dtype)


def crms_norm(x: jax.Array, scale: jax.Array | None = None, eps: float = 1e-6) -> jax.Array:
    """Compressed RMSNorm (Jiang et al. 2023) of x ∈ R^(d−1), read as a zero-mean vector in R^d.

    The dropped coordinate is x_d = −Σ x_i, so the mean square of the full vector is
    (Σ x_i² + (Σ x_i)²) / d; on that representation CRMSNorm(x) equals LayerNorm of the full
    vector restricted to its first d−1 coordinates. Used on a width-w model it treats the stream
    as a compressed (w+1)-vector (the paper's same-width variant).
    """
    xc = x.astype(compute_dtype(x.dtype))
    full_dim = x.shape[-1] + 1
    mean_square = (jnp.square(xc).sum(-1, keepdims=True)
                   + jnp.square(xc.sum(-1, keepdims=True))) / full_dim
    y = xc * jax.lax.rsqrt(mean_square + eps)
    return _affine(y, scale, None).astype(x.dtype)


def dynamic_tanh(x: jax.Array, alpha: jax.Array, scale: jax.Array | None = None,
                 bias: jax.Array | None = None) -> jax.Array:
    """DyT(x) = γ ⊙ tanh(α·x) + β with a learnable scalar α (Zhu et al. 2025)."""
    xc = x.astype(compute_dtype(x.dtype))
    y = jnp.tanh(alpha.astype(xc.dtype) * xc)
    return _affine(y, scale, bias).astype(x.dtype)


def feature_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-feature mean and (biased) variance over every axis but the last, as BatchNorm uses."""
    xc = x.astype(compute_dtype(x.dtype))
    axes = tuple(range(x.ndim - 1))
    mean = xc.mean(axes)
    return mean, jnp.square(xc - mean).mean(axes)


def batch_norm(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array | None = None,
               bias: jax.Array | None = None, eps: float = 1e-5) -> jax.Array:
    """(x − μ)/√(σ² + ε) per feature with the given statistics (batch or running)."""
    xc = x.astype(compute_dtype(x.dtype))
    y = (xc - mean.astype(xc.dtype)) * jax.lax.rsqrt(var.astype(xc.dtype) + eps)
    return _affine(y, scale, bias).astype(x.dtype)


def rep_batch_norm(x: jax.Array, mean: jax.Array, var: jax.Array, alpha: jax.Array,
                   scale: jax.Array | None = None, bias: jax.Array | None = None,
                   eps: float = 1e-5) -> jax.Array:
    """RepBN(x) = BN(x) + α·x (SLAB, Guo et al. 2024); α is a learnable scalar."""
    xc = x.astype(compute_dtype(x.dtype))
    y = batch_norm(xc, mean, var, scale, bias, eps) + alpha.astype(xc.dtype) * xc
    return y.astype(x.dtype)


def rep_batch_norm_affine(mean: jax.Array, var: jax.Array, alpha: jax.Array,
                          scale: jax.Array | None = None, bias: jax.Array | None = None,
                          eps: float = 1e-5) -> tuple[jax.Array, jax.Array]:
    """(a, c) with RepBN(x) = a ⊙ x + c for fixed statistics: the form that folds into a Dense."""
    inv = jax.lax.rsqrt(var + eps)
    gamma = jnp.ones_like(mean) if scale is None else scale
    beta = jnp.zeros_like(mean) if bias is None else bias
    return gamma * inv + alpha, beta - gamma * mean * inv


def fold_affine_into_dense(a: jax.Array, c: jax.Array, kernel: jax.Array,
                           bias: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(a ⊙ x + c) @ W + b  ==  x @ W' + b'  with W' = diag(a) W and b' = c W + b."""
    new_bias = c @ kernel
    if bias is not None:
        new_bias = new_bias + bias
    return a[:, None] * kernel, new_bias


def prepbn_lambda(step: jax.Array, *, warmup_steps: int, decay_steps: int,
                  r0: float = 1.0) -> jax.Array:
    """Weight of LayerNorm in progressive RepBN: 1 during warmup, then r0·(1 − t/T) down to 0.

    As in the SLAB code, λ jumps from 1 to r0 when warmup ends (equal when r0 = 1). It depends
    on the global optimizer step only, so gradient accumulation does not change the schedule.
    """
    t = jnp.asarray(step, jnp.float32) - warmup_steps
    decayed = r0 * jnp.clip(1.0 - t / max(decay_steps, 1), 0.0, 1.0)
    return jnp.where(t < 0, 1.0, decayed)


def power_norm(x: jax.Array, running_mean_square: jax.Array, scale: jax.Array | None = None,
               bias: jax.Array | None = None, eps: float = 1e-5) -> jax.Array:
    """PowerNorm forward (Shen et al. 2020): x / √(ψ² + ε) with ψ² a running quadratic mean.

    No mean subtraction; the statistic is a constant for autodiff (the paper's approximate
    backward drops the gradient through the statistics). The paper's extra backward correction,
    a running average of mean(x̂ ⊙ ∂L/∂x̂) subtracted from the gradient, is not implemented: its
    exact form and update point cannot be settled from the public notes we have.
    """
    xc = x.astype(compute_dtype(x.dtype))
    psi2 = jax.lax.stop_gradient(running_mean_square).astype(xc.dtype)
    y = xc * jax.lax.rsqrt(psi2 + eps)
    return _affine(y, scale, bias).astype(x.dtype)


def updated_mean_square(x: jax.Array, running_mean_square: jax.Array,
                        momentum: float) -> jax.Array:
    """ψ²_t = momentum·ψ²_{t−1} + (1 − momentum)·mean(x²) per feature, without gradient."""
    xc = jax.lax.stop_gradient(x).astype(compute_dtype(x.dtype))
    batch = jnp.square(xc).mean(tuple(range(x.ndim - 1)))
    batch = batch.astype(running_mean_square.dtype)
    return momentum * running_mean_square + (1.0 - momentum) * batch


# Weight reparametrizations. Kernels are [in, out] (y = x @ W); the spectral norm is the same
# for W and Wᵀ, and `u` lives on the output side.

def _unit(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x)) + eps)


def power_iteration(kernel: jax.Array, u: jax.Array, steps: int = 1) -> jax.Array:
    """`steps` rounds of u ← normalize(Wᵀ normalize(W u)), without gradient (Miyato et al.)."""
    w = jax.lax.stop_gradient(kernel).astype(compute_dtype(kernel.dtype))

    def one(u, _):
        return _unit(w.T @ _unit(w @ u)), None

    u, _ = jax.lax.scan(one, u.astype(w.dtype), None, length=steps)
    return u


def spectral_norm_estimate(kernel: jax.Array, u: jax.Array) -> jax.Array:
    """σ ≈ vᵀ W u with v = normalize(W u) held constant: gradient flows through W only."""
    w = kernel.astype(compute_dtype(kernel.dtype))
    u = jax.lax.stop_gradient(u).astype(w.dtype)
    v = jax.lax.stop_gradient(_unit(w @ u))
    return v @ w @ u


def top_right_singular_vector(kernel: jax.Array) -> jax.Array:
    """The exact top right singular vector (output side) of an [in, out] kernel, by SVD."""
    _, _, vt = jnp.linalg.svd(kernel.astype(compute_dtype(kernel.dtype)), full_matrices=False)
    return vt[0]


def weight_norm(direction: jax.Array, gain: jax.Array, eps: float = 1e-12) -> jax.Array:
    """w = g · v/‖v‖ per output unit (Salimans & Kingma 2016): columns of an [in, out] kernel."""
    v = direction.astype(compute_dtype(direction.dtype))
    return v * (gain * jax.lax.rsqrt(jnp.sum(jnp.square(v), axis=0) + eps))
