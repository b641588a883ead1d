"""Multiple-instance classifier: embed each instance, pool the bag with HopfieldPooling.

Inputs are [b, bag, features + 1] with the last channel marking real instances (see
jaxlab.data.bags), so padding never takes part in the pooling.

Config (model.*): width (instance embedding size), instance_layers (MLP depth before pooling),
num_heads, hidden_size (per head; 0 = width // num_heads), update_steps_max, scaling
(0 = the default 1/√hidden_size), quantity (learned state patterns), normalize (the three
input LayerNorms of the Hopfield layer), num_classes, dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.common import Dense
from jaxlab.layers.hopfield import HopfieldPooling
from jaxlab.registry import MODELS


@MODELS.register("mil")
class MILClassifier(nnx.Module):
    """bags [b, s, f + 1] -> logits [b, num_classes]."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        width, features = cfg.width, cfg.get("features", 0)
        if features < 1:
            raise ConfigError(f"model.features={features} must be the instance feature count (>= 1)")
        layers = cfg.get("instance_layers", 1)
        self.encoder = nnx.List([Dense(features if i == 0 else width, width, axes=(None, "embed"),
                                       rngs=rngs, use_bias=True) for i in range(layers)])
        scaling = cfg.get("scaling", 0.0)
        self.pool = HopfieldPooling(
            width, quantity=cfg.get("quantity", 1), num_heads=cfg.get("num_heads", 1),
            hidden_size=cfg.get("hidden_size", 0) or None,
            update_steps_max=cfg.get("update_steps_max", 0),
            scaling=scaling if scaling > 0 else None,
            normalize_stored_pattern=cfg.get("normalize", True),
            normalize_state_pattern=cfg.get("normalize", True),
            normalize_pattern_projection=cfg.get("normalize", True), rngs=rngs)
        self.head = Dense(cfg.get("quantity", 1) * width, cfg.num_classes, axes=("embed", None),
                          rngs=rngs, use_bias=True)

    def __call__(self, bags_bsf: jax.Array) -> jax.Array:
        instances, valid_bs = bags_bsf[..., :-1], bags_bsf[..., -1] > 0.5
        x = instances
        for layer in self.encoder:
            x = jax.nn.relu(layer(x))
        return self.head(self.pool(x, key_mask_bs=valid_bs)).astype(jnp.float32)
