"""Norm kinds for `model.norm`; each is built as Norm(dim, rngs=..., use_scale=..., use_bias=...)."""
from __future__ import annotations

import jax
from flax import nnx

from jaxlab.layers.common import param
from jaxlab.ops import norms
from jaxlab.registry import NORM


@NORM.register("layernorm")
class LayerNorm(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs, use_scale: bool = True, use_bias: bool = True,
                 eps: float = 1e-6):
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("embed",)) if use_scale else None
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), ("embed",)) if use_bias else None
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return norms.layer_norm(x, _value(self.scale), _value(self.bias), self.eps)


@NORM.register("rmsnorm")
class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs, use_scale: bool = True, use_bias: bool = False,
                 eps: float = 1e-6):
        del use_bias  # RMSNorm has no shift by definition
        self.scale = param(rngs, nnx.initializers.ones, (dim,), ("embed",)) if use_scale else None
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return norms.rms_norm(x, _value(self.scale), self.eps)


def _value(p: nnx.Param | None) -> jax.Array | None:
    return None if p is None else p[...]
