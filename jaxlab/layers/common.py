"""Parameters carry logical axis names (`axes`) that train/sharding.py maps onto the mesh."""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int],
          axes: Sequence[str | None]) -> nnx.Param:
    """A float32 parameter with one logical axis name per dimension."""
    if len(axes) != len(shape):
        raise ValueError(f"axes {tuple(axes)} do not match shape {tuple(shape)}")
    return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32), axes=tuple(axes))


def matmul_last_axis(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [..., k] @ w [k, n] -> [..., n], computed as one [prod(...), k] @ [k, n] product."""
    lead = x.shape[:-1]
    return jnp.dot(x.reshape(-1, x.shape[-1]), w).reshape(*lead, w.shape[-1])


class Dense(nnx.Module):
    """x @ kernel (+ bias), computed in `dtype` with float32 parameters."""

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str | None, str | None],
                 rngs: nnx.Rngs, use_bias: bool = False, dtype=jnp.float32,
                 init: Initializer | None = None):
        self.kernel = param(rngs, init or nnx.initializers.lecun_normal(),
                            (in_features, out_features), axes)
        self.bias = (param(rngs, nnx.initializers.zeros, (out_features,), axes[1:])
                     if use_bias else None)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # As one 2-D product over all leading axes: XLA:CPU's weight gradient for a product
        # contracting several axes at once ran 2-4x slower (benchmarks/RESULTS.md, train step).
        y = matmul_last_axis(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


@dataclasses.dataclass(frozen=True)
class ForwardMode:
    """How the current forward pass runs: `training` lets layers update their running state
    (norm statistics, power-iteration vectors); `step` is the global optimizer step (a traced
    int under jit) for layers with schedules (PRepBN). Eval is the default, so calling a model
    outside the trainer never changes its state."""
    training: bool = False
    step: Any = None


_MODE = contextvars.ContextVar("jaxlab_forward_mode", default=ForwardMode())


@contextlib.contextmanager
def training_mode(step: Any):
    """Forward passes traced inside this block run in training mode at global step `step`."""
    token = _MODE.set(ForwardMode(training=True, step=step))
    try:
        yield
    finally:
        _MODE.reset(token)


def forward_mode() -> ForwardMode:
    """How the forward pass being traced runs (eval unless inside `training_mode`)."""
    return _MODE.get()


def dense(cfg, in_features: int, out_features: int, *, axes: tuple[str | None, str | None],
          rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """The model's Dense: spectrally reparametrized (σReparam) when `cfg.sigma_reparam` is set."""
    kwargs.setdefault("dtype", jnp.dtype(cfg.dtype))
    if cfg.get("sigma_reparam", False):
        from jaxlab.layers.reparam import SigmaReparamDense  # reparam builds on Dense above
        return SigmaReparamDense(in_features, out_features, axes=axes, rngs=rngs, **kwargs)
    return Dense(in_features, out_features, axes=axes, rngs=rngs, **kwargs)
