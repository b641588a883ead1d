"""Losses that return per-example values in float32; the trainer does the weighted mean."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def softmax_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """-log softmax(logits)[target] per position; logits [..., V], targets [...] int."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit


def z_loss(logits: jax.Array) -> jax.Array:
    """(log Z)² per position, the PaLM auxiliary loss that keeps the softmax normalizer near 1."""
    return jnp.square(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1))


def accuracy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """1.0 where the arg-max of logits [..., classes] equals the integer target [...], else 0."""
    return (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
