"""Decoder-only Transformer language model assembled from the layer registries.

`model.scan_layers` runs the blocks as one jax.lax.scan (jaxlab/models/scan.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.blocks import make_norm, needs_final_norm
from jaxlab.layers.common import Dense
from jaxlab.layers.embed import Embed
from jaxlab.layers.macaron import make_block
from jaxlab.models.scan import ScannedBlocks, check_scan_layers
from jaxlab.registry import POSITION, MODELS


def check_heads(cfg) -> None:
    """A ConfigError unless the width splits into heads and the heads into kv groups."""
    kv_heads = cfg.get("num_kv_heads") or cfg.num_heads
    if cfg.width % cfg.num_heads:
        raise ConfigError(f"model.width={cfg.width} is not divisible by model.num_heads={cfg.num_heads}")
    if cfg.num_heads % kv_heads:
        raise ConfigError(f"model.num_heads={cfg.num_heads} is not a multiple of "
                          f"model.num_kv_heads={kv_heads}")
    if cfg.get("position") == "rope" and (cfg.width // cfg.num_heads) % 2:
        raise ConfigError(f"rotary positions need an even head dim, but model.width={cfg.width} / "
                          f"model.num_heads={cfg.num_heads} = {cfg.width // cfg.num_heads}")


# What each block keeps for the backward pass; the rest is recomputed (`model.remat`).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(name: str):
    """None for "none" (keep every activation), else a jax.checkpoint policy."""
    if name == "none":
        return None
    if name not in REMAT_POLICIES:
        raise ConfigError(f"model.remat={name!r} is unknown; valid: none, "
                          f"{', '.join(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]


def _call_block(block, x, positions_bt, key_mask_bs, **kwargs):
    return block(x, positions_bt=positions_bt, key_mask_bs=key_mask_bs, **kwargs)


@MODELS.register("lm")
class DecoderLM(nnx.Module):
    """tokens [b, t] -> logits [b, t, vocab]: embed, positions, blocks, final norm, head."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        check_heads(cfg)
        dtype = jnp.dtype(cfg.dtype)
        self.embed = Embed(cfg.vocab_size, cfg.width, rngs=rngs, dtype=dtype)
        self.positions = POSITION.get(cfg.position)(cfg, rngs=rngs)
        scan = check_scan_layers(cfg)
        # Built one by one either way, so a seed gives the same weights in both layouts.
        blocks = [make_block(cfg, i, rngs=rngs) for i in range(cfg.depth)]
        self.blocks = ScannedBlocks(blocks) if scan else nnx.List(blocks)
        self.final_norm = make_norm(cfg, rngs=rngs) if needs_final_norm(cfg) else None
        self.head = (None if cfg.tie_embeddings else
                     Dense(cfg.width, cfg.vocab_size, axes=("embed", "vocab"), rngs=rngs, dtype=dtype))
        self.remat = remat_policy(cfg.get("remat", "none"))

    def __call__(self, tokens_bt: jax.Array, *, key_mask_bs: jax.Array | None = None,
                 positions_bt: jax.Array | None = None, decode: bool = False) -> jax.Array:
        """decode=True reads and extends the attention caches (see jaxlab.models.generate);
        positions_bt then holds the tokens' absolute positions."""
        if positions_bt is None:
            positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        decode_kwargs = {"decode": True} if decode else {}  # kinds without decoding never see it
        x = self.positions(self.embed(tokens_bt), positions_bt)
        if isinstance(self.blocks, ScannedBlocks):
            x = self.blocks(x, remat=None if decode else self.remat, positions_bt=positions_bt,
                            key_mask_bs=key_mask_bs, **decode_kwargs)
        else:
            call = _call_block if decode or self.remat is None else nnx.remat(
                _call_block, policy=self.remat)
            for block in self.blocks:
                x = call(block, x, positions_bt, key_mask_bs, **decode_kwargs)
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = self.embed.attend(x) if self.head is None else self.head(x)
        # float64 models (the norm-equivalence tests) keep float64 logits.
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
