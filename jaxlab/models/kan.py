"""A KAN regressor (stacked KANLinear layers), the MLP it is compared with, and the `mse` loss
they train with.

Config (model.*): widths (e.g. [2, 5, 1]: inputs, hidden..., outputs), basis, grid_size, order,
grid_bound (the initial grid covers [−grid_bound, grid_bound]), base_activation ("" for none).
`name: mlp` builds the MLP baseline of the same widths instead (dense layers with biases and
base_activation between them). Outputs [b, widths[-1]]; with one output, `mse` compares it with
scalar targets.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.common import Dense
from jaxlab.layers.kan import KANLinear
from jaxlab.registry import LOSSES, MODELS


def _widths(cfg) -> list[int]:
    widths = list(cfg.widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ConfigError(f"model.widths={widths} needs at least an input and an output width >= 1")
    return widths


@MODELS.register("mlp")
class MLPRegressor(nnx.Module):
    """x [b, in] -> y [b, out]: dense layers of the given widths, the activation between them."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        widths = _widths(cfg)
        name = cfg.get("base_activation", "silu") or "silu"
        if not hasattr(jax.nn, name):
            raise ConfigError(f"model.base_activation={name!r} is not a jax.nn activation")
        self.activation = getattr(jax.nn, name)
        self.layers = nnx.List([
            Dense(a, b, axes=(None, None), rngs=rngs, use_bias=True)
            for a, b in zip(widths[:-1], widths[1:])])

    def __call__(self, x_bi: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x_bi = layer(x_bi) if i == 0 else layer(self.activation(x_bi))
        return x_bi.astype(jnp.float32)


@MODELS.register("kan")
class KANRegressor(nnx.Module):
    """x [b, in] -> y [b, out] through KANLinear layers of the given widths."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        widths = _widths(cfg)
        bound = cfg.get("grid_bound", 1.0)
        self.layers = nnx.List([
            KANLinear(a, b, basis=cfg.get("basis", "bspline"), grid_size=cfg.get("grid_size", 5),
                      order=cfg.get("order", 3), grid_range=(-bound, bound),
                      base_activation=cfg.get("base_activation", "silu") or None, rngs=rngs)
            for a, b in zip(widths[:-1], widths[1:])])

    def __call__(self, x_bi: jax.Array) -> jax.Array:
        for layer in self.layers:
            x_bi = layer(x_bi)
        return x_bi.astype(jnp.float32)

    def regularization(self, x_bi: jax.Array, *, l1: float = 1.0, entropy: float = 2.0) -> jax.Array:
        """Sum of every layer's L1 + entropy penalty on its own inputs."""
        total = 0.0
        for layer in self.layers:
            total = total + layer.regularization(x_bi, l1=l1, entropy=entropy)
            x_bi = layer(x_bi)
        return total


    def prune_nodes(self, x_bi: jax.Array, threshold: float = 1e-2) -> list[int]:
        """Remove hidden nodes whose strongest incoming or outgoing edge scores below
        `threshold` on the samples x (pykan's node pruning); returns the new widths."""
        inputs = [x_bi]
        for layer in self.layers[:-1]:
            inputs.append(layer(inputs[-1]))
        scores = [layer.edge_scores(h) for layer, h in zip(self.layers, inputs)]
        for l in range(len(self.layers) - 1):
            incoming, outgoing = scores[l].max(axis=1), scores[l + 1].max(axis=0)
            alive = (incoming >= threshold) & (outgoing >= threshold)
            keep = jnp.flatnonzero(alive) if bool(alive.any()) else jnp.argmax(incoming)[None]
            self.layers[l].keep(outputs=keep)
            self.layers[l + 1].keep(inputs=keep)
            scores[l + 1] = scores[l + 1][:, keep]
        return [self.layers[0].in_features] + [layer.out_features for layer in self.layers]


# Registered here, beside the only model that needs it; the LOSSES lookup happens after
# jaxlab.models is imported (the trainer builds the model first).
@LOSSES.register("mse")
def squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-example squared error summed over outputs; a scalar target matches one output."""
    if predictions.ndim == targets.ndim + 1:
        targets = targets[..., None]
    return jnp.sum(jnp.square(predictions - targets), axis=tuple(range(1, predictions.ndim)))
