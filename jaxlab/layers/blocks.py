"""Residual blocks and norm placements (`model.norm_position`).

A norm position wraps one sublayer (attention or FFN) with its residual connection and
norms, so a new placement (Peri-LN, Mix-LN, depth-scaled norms) is one registered class.
It is built as Position(sublayer, cfg, layer_index, rngs=...) and says whether the model
needs a final norm before the head.
"""
from __future__ import annotations

import jax
from flax import nnx

from jaxlab.registry import ATTENTION, FFN, NORM, NORM_POSITION


def make_norm(cfg, *, rngs: nnx.Rngs) -> nnx.Module:
    return NORM.get(cfg.norm)(cfg.width, rngs=rngs)


@NORM_POSITION.register("pre")
class PreNorm(nnx.Module):
    """x + f(norm(x)); the stream itself is normalized once more before the head."""
    final_norm = True

    def __init__(self, sublayer: nnx.Module, cfg, layer_index: int, *, rngs: nnx.Rngs):
        del layer_index
        self.norm = make_norm(cfg, rngs=rngs)
        self.sublayer = sublayer

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        return x + self.sublayer(self.norm(x), **kwargs)


@NORM_POSITION.register("post")
class PostNorm(nnx.Module):
    """norm(x + f(x)), as in the original Transformer; the output is already normalized."""
    final_norm = False

    def __init__(self, sublayer: nnx.Module, cfg, layer_index: int, *, rngs: nnx.Rngs):
        del layer_index
        self.norm = make_norm(cfg, rngs=rngs)
        self.sublayer = sublayer

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        return self.norm(x + self.sublayer(x, **kwargs))


class Block(nnx.Module):
    """One Transformer layer: attention then FFN, each inside the configured norm position."""

    def __init__(self, cfg, layer_index: int, *, rngs: nnx.Rngs):
        position = NORM_POSITION.get(cfg.norm_position)
        attention = ATTENTION.get(cfg.attention)(cfg, rngs=rngs)
        ffn = FFN.get(cfg.ffn)(cfg, rngs=rngs)
        self.attention = position(attention, cfg, layer_index, rngs=rngs)
        self.ffn = position(ffn, cfg, layer_index, rngs=rngs)

    def __call__(self, x_btd: jax.Array, **attention_kwargs) -> jax.Array:
        return self.ffn(self.attention(x_btd, **attention_kwargs))
