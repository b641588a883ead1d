"""Depth diagnostics for any model with a `blocks` list (decoder LM, ViT) and a batch.

    from jaxlab.analysis import depth
    report = depth.depth_report(model, batch)   # {"rms": [L+1], "variance": [L+1], ...}

Hidden state ℓ is the residual stream entering block ℓ (ℓ = 0 is the embedding output) and
state L the last block's output, before any final norm. Everything runs eagerly on the model as
it is (eval mode: no running state moves); blocks are swapped in and out only for the duration
of a call. A model with `model.scan_layers=True` is read through a per-layer copy with the same
weights (`unstack_layers`), so the report is the same in both layouts.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlab.models.scan import unstack_layers
from jaxlab.registry import LOSSES

Batch = dict[str, jax.Array]


class _Tap(nnx.Module):
    """Runs a block and hands its input and output to a callback."""

    def __init__(self, block: nnx.Module, index: int, record: Callable):
        self.block, self.index, self.record = block, index, record

    def __call__(self, x, **kwargs):
        y = self.block(x, **kwargs)
        self.record(self.index, x, y)
        return y


class _Skip(nnx.Module):
    def __call__(self, x, **kwargs):
        return x


@contextlib.contextmanager
def _swapped(model: nnx.Module, make: Callable[[int, nnx.Module], nnx.Module | None]):
    """Replaces block i by make(i, block) (None keeps it) and restores them afterwards."""
    originals = list(model.blocks)
    try:
        for i, block in enumerate(originals):
            replacement = make(i, block)
            if replacement is not None:
                model.blocks[i] = replacement
        yield
    finally:
        for i, block in enumerate(originals):
            model.blocks[i] = block


def hidden_states(model: nnx.Module, inputs: jax.Array) -> list[jax.Array]:
    """[h_0, …, h_L]: the stream entering each block, then the last block's output."""
    model = unstack_layers(model)
    states: dict[int, jax.Array] = {}

    def record(i, x, y):
        states.setdefault(i, x)
        states[i + 1] = y

    with _swapped(model, lambda i, block: _Tap(block, i, record)):
        model(inputs)
    return [states[i] for i in range(len(model.blocks) + 1)]


def stream_statistics(states: list[jax.Array]) -> dict[str, np.ndarray]:
    """Per hidden state: RMS over all entries, and the variance over features averaged over
    tokens (what the Curse-of-Depth and Peri-LN papers plot against depth)."""
    rms = [float(jnp.sqrt(jnp.mean(jnp.square(h.astype(jnp.float32))))) for h in states]
    var = [float(jnp.mean(jnp.var(h.astype(jnp.float32), axis=-1))) for h in states]
    return {"rms": np.asarray(rms), "variance": np.asarray(var)}


def angular_distances(states: list[jax.Array]) -> np.ndarray:
    """[L]: arccos(cos(h_ℓ, h_ℓ+1))/π per token, averaged; 0 means block ℓ kept the direction
    (Gromov et al.'s layer-redundancy measure, also used by Mix-LN)."""
    out = []
    for a, b in zip(states[:-1], states[1:]):
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
                                    + 1e-12)
        out.append(float(jnp.mean(jnp.arccos(jnp.clip(cos, -1.0, 1.0)) / jnp.pi)))
    return np.asarray(out)


def batch_loss(model: nnx.Module, batch: Batch, loss: str = "xent") -> jax.Array:
    """Weighted mean of the `train.loss` kind over the batch (weights default to 1)."""
    logits = model(batch["inputs"])
    per_example = LOSSES.get(loss)(logits, batch["targets"])
    weights = batch.get("weights")
    weights = jnp.ones_like(per_example) if weights is None else weights.astype(jnp.float32)
    return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def skip_one_layer_loss_change(model: nnx.Module, batch: Batch, loss: str = "xent") -> np.ndarray:
    """[L]: loss with block ℓ replaced by the identity, minus the full model's loss."""
    model = unstack_layers(model)
    full = float(batch_loss(model, batch, loss))
    changes = []
    for skipped in range(len(model.blocks)):
        with _swapped(model, lambda i, block: _Skip() if i == skipped else None):
            changes.append(float(batch_loss(model, batch, loss)) - full)
    return np.asarray(changes)


def layer_gradient_norms(model: nnx.Module, batch: Batch, loss: str = "xent") -> np.ndarray:
    """[L]: global norm of the loss gradient over each block's parameters."""
    model = unstack_layers(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_of(params):
        return batch_loss(nnx.merge(graphdef, params, rest), batch, loss)

    grads = nnx.to_pure_dict(jax.jit(jax.grad(loss_of))(params))["blocks"]
    return np.asarray([
        float(jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads[i]))))
        for i in range(len(model.blocks))])


def depth_report(model: nnx.Module, batch: Batch, loss: str = "xent") -> dict[str, np.ndarray]:
    """Every depth diagnostic at once, as numpy arrays keyed by name."""
    model = unstack_layers(model)
    states = hidden_states(model, batch["inputs"])
    return {**stream_statistics(states), "angular_distance": angular_distances(states),
            "grad_norm": layer_gradient_norms(model, batch, loss),
            "skip_loss_change": skip_one_layer_loss_change(model, batch, loss)}
