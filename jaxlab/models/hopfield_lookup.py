"""A HopfieldLayer classifier for small tables: each example, embedded, retrieves from
`quantity` learned stored patterns (prototypes) and the retrieved pattern is classified.

Config (model.*): features, width, quantity, num_heads, update_steps_max, scaling (0 = default
1/√head_dim), num_classes, dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.common import Dense
from jaxlab.layers.hopfield import HopfieldLayer
from jaxlab.registry import MODELS


@MODELS.register("hopfield_lookup")
class HopfieldLookupClassifier(nnx.Module):
    """x [b, features] -> logits [b, num_classes]."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        if cfg.get("features", 0) < 1:
            raise ConfigError(f"model.features={cfg.get('features', 0)} must be the input width (>= 1)")
        width = cfg.width
        self.embed = Dense(cfg.features, width, axes=(None, "embed"), rngs=rngs, use_bias=True)
        scaling = cfg.get("scaling", 0.0)
        self.lookup = HopfieldLayer(width, quantity=cfg.get("quantity", 16),
                                    num_heads=cfg.get("num_heads", 1),
                                    update_steps_max=cfg.get("update_steps_max", 0),
                                    scaling=scaling if scaling > 0 else None, rngs=rngs)
        self.head = Dense(width, cfg.num_classes, axes=("embed", None), rngs=rngs, use_bias=True)

    def __call__(self, x_bf: jax.Array) -> jax.Array:
        state = jax.nn.gelu(self.embed(x_bf))[:, None, :]  # each example is one state pattern
        return self.head(self.lookup(state)[:, 0]).astype(jnp.float32)
