"""Token embeddings and position encodings (`model.position`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.layers.common import matmul_last_axis, param
from jaxlab.registry import POSITION


class Embed(nnx.Module):
    """Token ids -> vectors; `attend` reuses the table as a tied output head."""

    def __init__(self, vocab_size: int, width: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.table = param(rngs, nnx.initializers.normal(stddev=0.02), (vocab_size, width),
                           ("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.table[...], ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        return matmul_last_axis(x.astype(self.dtype), self.table[...].astype(self.dtype).T)


@POSITION.register("learned")
class LearnedPositions(nnx.Module):
    """Adds a trained vector per absolute position (GPT-2 style)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.table = param(rngs, nnx.initializers.normal(stddev=0.02), (cfg.max_len, cfg.width),
                           (None, "embed"))

    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array) -> jax.Array:
        if x_btd.shape[1] > self.table.shape[0]:
            # A gather past the table would silently reuse its last row.
            raise ValueError(f"sequence length {x_btd.shape[1]} exceeds the {self.table.shape[0]} "
                             f"learned positions (model.max_len)")
        return x_btd + jnp.take(self.table[...], positions_bt, axis=0).astype(x_btd.dtype)


@POSITION.register("rope")
class RotaryPositions(nnx.Module):
    """Rotary positions act inside attention (see SoftmaxAttention); nothing is added here."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        del cfg, rngs

    def __call__(self, x_btd: jax.Array, positions_bt: jax.Array) -> jax.Array:
        return x_btd


POSITION.register("none")(RotaryPositions)
