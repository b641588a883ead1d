"""Block kinds (`model.block`): the standard block and the Macaron block.

Macaron (Lu et al. 2019) reads the Transformer layer as a splitting step of an ODE and uses
the symmetric (Strang) splitting: half an FFN step, the attention step, half an FFN step.
Each of the three sublayers sits in its own instance of the configured norm position (own
norms); the ½ multiplies the FFN's residual branch, i.e. its output, not its input.
Under `post` that means norm(x + ½·f(x)); under `peri` the ½ acts before the output norm, which
rescales it away, so peri-Macaron differs from peri-standard only by the extra FFN.

`model.macaron_half_width` halves each FFN's width so the two FFNs together hold as many
parameters as the standard block's one (the released Macaron configs do this).
"""
from __future__ import annotations

import copy

import jax
from flax import nnx

from jaxlab.layers.attention_schedule import attention_kind
from jaxlab.layers.blocks import Block, embedding_norm
from jaxlab.registry import ATTENTION, BLOCKS, FFN, NORM_POSITION

BLOCKS.register("standard")(Block)


def make_block(cfg, layer_index: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """The block kind named by `model.block` (default "standard")."""
    return BLOCKS.get(cfg.get("block", "standard"))(cfg, layer_index, rngs=rngs)


class HalfStep(nnx.Module):
    """½·f(x): the Macaron FFN residual branch."""

    def __init__(self, ffn: nnx.Module):
        self.ffn = ffn

    def __call__(self, x: jax.Array) -> jax.Array:
        return 0.5 * self.ffn(x)


def half_width(cfg):
    """A copy of the model config whose FFN is half as wide."""
    half = copy.deepcopy(cfg)
    half.ffn_mult = cfg.ffn_mult / 2
    return half


@BLOCKS.register("macaron")
class MacaronBlock(nnx.Module):
    """½FFN → attention → ½FFN, each inside the configured norm position."""

    def __init__(self, cfg, layer_index: int, *, rngs: nnx.Rngs):
        position = NORM_POSITION.get(cfg.norm_position)
        ffn_cfg = half_width(cfg) if cfg.get("macaron_half_width", False) else cfg
        self.ffn_in = position(HalfStep(FFN.get(cfg.ffn)(ffn_cfg, rngs=rngs)), cfg, layer_index, rngs=rngs)
        self.attention = position(ATTENTION.get(attention_kind(cfg, layer_index))(cfg, rngs=rngs),
                                  cfg, layer_index, rngs=rngs)
        self.ffn_out = position(HalfStep(FFN.get(cfg.ffn)(ffn_cfg, rngs=rngs)), cfg, layer_index, rngs=rngs)
        self.embedding_norm = embedding_norm(position, cfg, layer_index, rngs=rngs)

    def __call__(self, x_btd: jax.Array, **attention_kwargs) -> jax.Array:
        if self.embedding_norm is not None:
            x_btd = self.embedding_norm(x_btd)
        return self.ffn_out(self.attention(self.ffn_in(x_btd), **attention_kwargs))
