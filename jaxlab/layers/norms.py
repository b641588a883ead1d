"""Norm kinds for `model.norm`.

Each is built as Norm(dim, rngs=..., use_scale=..., use_bias=..., axes=("embed",)); a kind with
config-driven options also has `config_kwargs(cfg)`, which `blocks.make_norm` passes on.
`use_scale=use_bias=False` gives the affine-free variant (`model.norm_affine=False`).
Stateful kinds keep running statistics in nnx.BatchStat variables (the train state's "extra")
and update them only in training mode (see layers.common.training_mode).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.kernels import dispatch
from jaxlab.kernels.fused_norm import fused_norm
from jaxlab.layers.common import forward_mode, param
from jaxlab.ops import norms
from jaxlab.registry import NORM


def _affine_params(rngs, dim, axes, use_scale, use_bias):
    scale = param(rngs, nnx.initializers.ones, (dim,), axes) if use_scale else None
    bias = param(rngs, nnx.initializers.zeros, (dim,), axes) if use_bias else None
    return scale, bias


def _kernel_config(cls, cfg) -> dict:
    return {"kernels": dispatch.check_impl(cfg.get("kernels", "xla"))}


def _fused(x, scale, bias, kind: str, eps: float, impl: str):
    """The same norm through jaxlab.kernels.fused_norm (model.kernels other than "xla")."""
    scale = jnp.ones(x.shape[-1], jnp.float32) if scale is None else scale
    return fused_norm(x, scale, bias, kind=kind, eps=eps, impl=impl)


@NORM.register("layernorm")
class LayerNorm(nnx.Module):
    """LayerNorm over the last axis, x [..., dim] -> [..., dim]: (x − mean) / √(var + eps), times
    a learned scale, plus a bias (Ba et al., 2016); statistics in float32. `kernels` routes it to
    the fused Pallas norm (jaxlab.kernels.fused_norm)."""

    config_kwargs = classmethod(_kernel_config)

    def __init__(self, dim: int, *, rngs: nnx.Rngs, use_scale: bool = True, use_bias: bool = True,
                 eps: float = 1e-6, axes: Sequence[str | None] = ("embed",), kernels: str = "xla"):
        self.scale, self.bias = _affine_params(rngs, dim, axes, use_scale, use_bias)
        self.eps, self.kernels = eps, kernels

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kernels != "xla":
            return _fused(x, _value(self.scale), _value(self.bias), "layer", self.eps, self.kernels)
        return norms.layer_norm(x, _value(self.scale), _value(self.bias), self.eps)


@NORM.register("rmsnorm")
class RMSNorm(nnx.Module):
    """RMSNorm over the last axis, x [..., dim] -> [..., dim]: x / √(mean(x²) + eps) times a
    learned scale, no centring and no bias (Zhang & Sennrich, 2019); statistics in float32.
    `kernels` routes it to the fused Pallas norm (jaxlab.kernels.fused_norm)."""

    config_kwargs = classmethod(_kernel_config)

    def __init__(self, dim: int, *, rngs: nnx.Rngs, use_scale: bool = True, use_bias: bool = False,
                 eps: float = 1e-6, axes: Sequence[str | None] = ("embed",), kernels: str = "xla"):
        del use_bias  # RMSNorm has no shift by definition
        self.scale, _ = _affine_params(rngs, dim, axes, use_scale, False)
        self.eps, self.kernels = eps, kernels

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kernels != "xla":
            return _fused(x, _value(self.scale), None, "rms", self.eps, self.kernels)
        return norms.rms_norm(x, _value(self.scale), self.eps)


@NORM.register("crmsnorm")
class CRMSNorm(RMSNorm):
    """Compressed RMSNorm: the width-w stream is read as a zero-mean (w+1)-vector (ops.crms_norm)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return norms.crms_norm(x, _value(self.scale), self.eps)


@NORM.register("dyt")
class DynamicTanh(nnx.Module):
    """γ ⊙ tanh(α·x) + β; α is a learnable scalar initialised to 0.5 (the DyT paper's default)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, use_scale: bool = True, use_bias: bool = True,
                 alpha_init: float = 0.5, axes: Sequence[str | None] = ("embed",)):
        self.alpha = param(rngs, nnx.initializers.constant(alpha_init), (), ())
        self.scale, self.bias = _affine_params(rngs, dim, axes, use_scale, use_bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        return norms.dynamic_tanh(x, self.alpha[...], _value(self.scale), _value(self.bias))


@NORM.register("powernorm")
class PowerNorm(nnx.Module):
    """x / ψ with ψ² a running quadratic mean per feature (PowerNorm, Shen et al. 2020).

    Training normalizes with the previous ψ² and then updates it from the batch (momentum 0.9,
    the paper's default); eval only reads it. See ops.power_norm for the approximate backward.
    """

    def __init__(self, dim: int, *, rngs: nnx.Rngs, use_scale: bool = True, use_bias: bool = True,
                 eps: float = 1e-5, momentum: float = 0.9,
                 axes: Sequence[str | None] = ("embed",)):
        self.scale, self.bias = _affine_params(rngs, dim, axes, use_scale, use_bias)
        self.mean_square = nnx.BatchStat(jnp.ones((dim,), jnp.float32))
        self.eps, self.momentum = eps, momentum

    def __call__(self, x: jax.Array) -> jax.Array:
        y = norms.power_norm(x, self.mean_square[...], _value(self.scale), _value(self.bias),
                             self.eps)
        if forward_mode().training:
            self.mean_square[...] = norms.updated_mean_square(x, self.mean_square[...],
                                                              self.momentum)
        return y


@NORM.register("repbn")
class RepBN(nnx.Module):
    """BN(x) + α·x (SLAB); batch statistics over batch and positions in training, running ones
    at eval, when the whole norm is the affine map that `eval_affine` returns for folding."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs, use_scale: bool = True, use_bias: bool = True,
                 eps: float = 1e-5, momentum: float = 0.9, alpha_init: float = 1.0,
                 axes: Sequence[str | None] = ("embed",)):
        self.scale, self.bias = _affine_params(rngs, dim, axes, use_scale, use_bias)
        self.alpha = param(rngs, nnx.initializers.constant(alpha_init), (), ())
        self.mean = nnx.BatchStat(jnp.zeros((dim,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((dim,), jnp.float32))
        self.eps, self.momentum = eps, momentum

    def __call__(self, x: jax.Array, *, update_stats: jax.Array | bool = True) -> jax.Array:
        if not forward_mode().training:
            return norms.rep_batch_norm(x, self.mean[...], self.var[...], self.alpha[...],
                                       _value(self.scale), _value(self.bias), self.eps)
        mean, var = norms.feature_moments(x)
        y = norms.rep_batch_norm(x, mean, var, self.alpha[...], _value(self.scale),
                                 _value(self.bias), self.eps)
        m = self.momentum
        for stat, batch in ((self.mean, mean), (self.var, var)):
            new = m * stat[...] + (1 - m) * jax.lax.stop_gradient(batch).astype(jnp.float32)
            stat[...] = jnp.where(update_stats, new, stat[...])
        return y

    def eval_affine(self) -> tuple[jax.Array, jax.Array]:
        """(a, c) with eval-mode RepBN(x) = a ⊙ x + c."""
        return norms.rep_batch_norm_affine(self.mean[...], self.var[...], self.alpha[...],
                                           _value(self.scale), _value(self.bias), self.eps)


@NORM.register("prepbn")
class ProgressiveRepBN(nnx.Module):
    """λ·LayerNorm(x) + (1−λ)·RepBN(x) in training, RepBN alone at eval (SLAB's PRepBN).

    λ = ops.prepbn_lambda(global step): 1 for `warmup_steps`, then r0·(1 − t/decay_steps).
    As in the SLAB code the BN statistics are not updated during warmup. Config keys:
    model.prepbn_warmup_steps, model.prepbn_decay_steps, model.prepbn_r0.
    """

    def __init__(self, dim: int, *, rngs: nnx.Rngs, use_scale: bool = True, use_bias: bool = True,
                 warmup_steps: int = 0, decay_steps: int = 1000, r0: float = 1.0,
                 axes: Sequence[str | None] = ("embed",)):
        self.layer_norm = LayerNorm(dim, rngs=rngs, use_scale=use_scale, use_bias=use_bias,
                                    axes=axes)
        self.rep_bn = RepBN(dim, rngs=rngs, use_scale=use_scale, use_bias=use_bias, axes=axes)
        self.warmup_steps, self.decay_steps, self.r0 = warmup_steps, decay_steps, r0

    @staticmethod
    def config_kwargs(cfg) -> dict:
        return dict(warmup_steps=int(cfg.get("prepbn_warmup_steps", 0)),
                    decay_steps=int(cfg.get("prepbn_decay_steps", 1000)),
                    r0=float(cfg.get("prepbn_r0", 1.0)))

    def __call__(self, x: jax.Array) -> jax.Array:
        mode = forward_mode()
        if not mode.training:
            return self.rep_bn(x)
        if mode.step is None:
            raise ValueError("prepbn needs the global step in training mode: "
                             "run the forward pass inside layers.common.training_mode(step)")
        lam = self.lam(mode.step)
        warm_done = jnp.asarray(mode.step) >= self.warmup_steps
        wide = norms.compute_dtype(x.dtype)
        mixed = (lam.astype(wide) * self.layer_norm(x).astype(wide)
                 + (1 - lam.astype(wide)) * self.rep_bn(x, update_stats=warm_done).astype(wide))
        return mixed.astype(x.dtype)

    def lam(self, step) -> jax.Array:
        return norms.prepbn_lambda(step, warmup_steps=self.warmup_steps,
                                   decay_steps=self.decay_steps, r0=self.r0)


QK_NORMS = {"": None, "layer": "layernorm", "rms": "rmsnorm"}


def qk_norms(cfg, head_dim: int, *, rngs: nnx.Rngs) -> tuple[nnx.Module | None, nnx.Module | None]:
    """Separate q and k norms over head_dim for `model.qk_norm` ("" off, "layer", "rms").

    Affine weights (`model.qk_norm_affine`, default True) are shared across heads and replicated.
    """
    name = cfg.get("qk_norm", "")
    if name not in QK_NORMS:
        raise ConfigError(f"model.qk_norm={name!r} is not a qk-norm; valid: "
                          f"{', '.join(repr(k) for k in QK_NORMS)}")
    if not name:
        return None, None
    affine = bool(cfg.get("qk_norm_affine", True))
    kind = NORM.get(QK_NORMS[name])
    make = lambda: kind(head_dim, rngs=rngs, use_scale=affine, use_bias=affine, axes=(None,))
    return make(), make()


def _value(p: nnx.Param | None) -> jax.Array | None:
    return None if p is None else p[...]
