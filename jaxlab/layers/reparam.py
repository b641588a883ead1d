"""Reparametrized Dense layers: σReparam, spectral normalization and weight normalization.

Each is a drop-in for layers.common.Dense (same constructor and call). The power-iteration
vector `u` is a non-parameter variable, so it travels in the train state's "extra" and is
advanced once per forward pass in training mode (layers.common.training_mode) and frozen at eval.
With gradient accumulation that is once per microbatch: the kernel is fixed within a step, so
the extra iterations only sharpen the σ estimate (the papers do one per step).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.layers.common import Dense, Initializer, forward_mode, param
from jaxlab.ops import norms


class PowerIterationState(nnx.Variable):
    """The running estimate of a kernel's top right singular vector."""


class SpectralNormDense(Dense):
    """x @ (W / σ(W)) (+ b), σ by one power iteration per training step (Miyato et al. 2018)."""

    def __init__(self, in_features: int, out_features: int, *,
                 axes: tuple[str | None, str | None], rngs: nnx.Rngs, use_bias: bool = False,
                 dtype=jnp.float32, init: Initializer | None = None):
        super().__init__(in_features, out_features, axes=axes, rngs=rngs, use_bias=use_bias,
                         dtype=dtype, init=init)
        # Exact at init (SVD), as the σReparam reference does, so step 1 already has the true σ.
        self.u = PowerIterationState(norms.top_right_singular_vector(self.kernel[...]))

    def sigma(self) -> jax.Array:
        """σ(W) from the current vector, advancing it first when training."""
        if forward_mode().training:
            self.u[...] = norms.power_iteration(self.kernel[...], self.u[...]).astype(
                self.u[...].dtype)
        return norms.spectral_norm_estimate(self.kernel[...], self.u[...])

    def gain(self, sigma: jax.Array) -> jax.Array:
        return 1.0 / sigma

    def effective_kernel(self) -> jax.Array:
        return self.kernel[...] * self.gain(self.sigma())

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.effective_kernel().astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class SigmaReparamDense(SpectralNormDense):
    """x @ ((γ/σ(W))·W) (+ b): σReparam (Zhai et al. 2023) with a learnable scalar γ.

    γ starts at σ(W₀), so the layer equals a plain Dense at init (the vision reference's
    choice; the speech reference starts γ at 1). σ carries gradient; the vectors do not.
    """

    def __init__(self, in_features: int, out_features: int, **kwargs):
        super().__init__(in_features, out_features, **kwargs)
        sigma0 = norms.spectral_norm_estimate(self.kernel[...], self.u[...])
        self.gamma = param(kwargs["rngs"], nnx.initializers.constant(sigma0), (), ())

    def gain(self, sigma: jax.Array) -> jax.Array:
        return self.gamma[...] / sigma


class WeightNormDense(Dense):
    """x @ (g · V/‖V‖ per output column) (+ b) (Salimans & Kingma 2016); g starts at ‖V₀‖."""

    def __init__(self, in_features: int, out_features: int, *,
                 axes: tuple[str | None, str | None], rngs: nnx.Rngs, use_bias: bool = False,
                 dtype=jnp.float32, init: Initializer | None = None):
        super().__init__(in_features, out_features, axes=axes, rngs=rngs, use_bias=use_bias,
                         dtype=dtype, init=init)
        column_norms = jnp.linalg.norm(self.kernel[...], axis=0)
        self.gain = nnx.Param(column_norms, axes=axes[1:])

    def effective_kernel(self) -> jax.Array:
        return norms.weight_norm(self.kernel[...], self.gain[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.effective_kernel().astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y
