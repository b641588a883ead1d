"""FFN kinds for `model.ffn`; each is built as FFN(cfg, rngs=...) from the model config."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.common import dense
from jaxlab.registry import FFN

ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "silu": jax.nn.silu, "tanh": jnp.tanh}


def activation(name: str):
    """The elementwise activation function called `name` (model.activation)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]


def hidden_width(cfg) -> int:
    """The FFN's hidden width: model.width × model.ffn_mult."""
    return int(cfg.width * cfg.ffn_mult)


@FFN.register("mlp")
class MLP(nnx.Module):
    """down(act(up(x)))."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.up = dense(cfg, cfg.width, hidden_width(cfg), axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.down = dense(cfg, hidden_width(cfg), cfg.width, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.act = activation(cfg.get("activation", "gelu"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(self.act(self.up(x)))


@FFN.register("glu")
class GLU(nnx.Module):
    """down(act(gate(x)) * up(x)); with activation=silu this is SwiGLU."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        hidden = hidden_width(cfg)
        self.gate = dense(cfg, cfg.width, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.up = dense(cfg, cfg.width, hidden, axes=("embed", "mlp"), rngs=rngs, dtype=dtype)
        self.down = dense(cfg, hidden, cfg.width, axes=("mlp", "embed"), rngs=rngs, dtype=dtype)
        self.act = activation(cfg.get("activation", "silu"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(self.act(self.gate(x)) * self.up(x))
