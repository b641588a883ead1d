"""Multiple-instance classifier: embed each instance, pool the bag (HopfieldPooling, or the
mean or max of the instance embeddings as baselines), classify the pooled vector.

Inputs are [b, bag, features + 1] with the last channel marking real instances (see
jaxlab.data.bags), so padding never takes part in the pooling.

Config (model.*): width (instance embedding size), instance_layers (MLP depth before pooling),
num_heads, hidden_size (per head; 0 = width // num_heads), update_steps_max, scaling
(0 = the default 1/√hidden_size), quantity (learned state patterns), normalize (the three
input LayerNorms of the Hopfield layer), num_classes, dtype, pooling (hopfield, mean, max;
the Hopfield settings apply to hopfield only).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.common import Dense
from jaxlab.layers.hopfield import HopfieldPooling
from jaxlab.registry import MODELS

POOLINGS = ("hopfield", "mean", "max")


@MODELS.register("mil")
class MILClassifier(nnx.Module):
    """bags [b, s, f + 1] -> logits [b, num_classes]."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        width, features = cfg.width, cfg.get("features", 0)
        if features < 1:
            raise ConfigError(f"model.features={features} must be the instance feature count (>= 1)")
        self.pooling = cfg.get("pooling", "hopfield")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={self.pooling!r} is unknown; valid: "
                              f"{', '.join(POOLINGS)}")
        layers = cfg.get("instance_layers", 1)
        self.encoder = nnx.List([Dense(features if i == 0 else width, width, axes=(None, "embed"),
                                       rngs=rngs, use_bias=True) for i in range(layers)])
        scaling = cfg.get("scaling", 0.0)
        quantity = cfg.get("quantity", 1) if self.pooling == "hopfield" else 1
        self.pool = None if self.pooling != "hopfield" else HopfieldPooling(
            width, quantity=cfg.get("quantity", 1), num_heads=cfg.get("num_heads", 1),
            hidden_size=cfg.get("hidden_size", 0) or None,
            update_steps_max=cfg.get("update_steps_max", 0),
            scaling=scaling if scaling > 0 else None,
            normalize_stored_pattern=cfg.get("normalize", True),
            normalize_state_pattern=cfg.get("normalize", True),
            normalize_pattern_projection=cfg.get("normalize", True), rngs=rngs)
        self.head = Dense(quantity * width, cfg.num_classes, axes=("embed", None), rngs=rngs,
                          use_bias=True)

    def __call__(self, bags_bsf: jax.Array) -> jax.Array:
        instances, valid_bs = bags_bsf[..., :-1], bags_bsf[..., -1] > 0.5
        x = instances
        for layer in self.encoder:
            x = jax.nn.relu(layer(x))
        if self.pooling == "hopfield":
            pooled = self.pool(x, key_mask_bs=valid_bs)
        elif self.pooling == "mean":
            count = jnp.maximum(valid_bs.sum(1, keepdims=True), 1)
            pooled = jnp.where(valid_bs[..., None], x, 0.0).sum(1) / count
        else:  # an empty bag pools to zeros rather than −inf
            pooled = jnp.where(valid_bs.any(1, keepdims=True),
                               jnp.where(valid_bs[..., None], x, -jnp.inf).max(1), 0.0)
        return self.head(pooled).astype(jnp.float32)
