"""A small Vision Transformer classifier (sized for the 8×8 `digits` images)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.blocks import make_norm
from jaxlab.layers.common import Dense
from jaxlab.layers.embed import LearnedPositions
from jaxlab.layers.macaron import make_block
from jaxlab.models.transformer import check_heads
from jaxlab.registry import MODELS


def patchify(images_bhwc: jax.Array, patch: int) -> jax.Array:
    """[b, h, w, c] -> [b, (h/p)·(w/p), p·p·c], patches in row-major order."""
    b, h, w, c = images_bhwc.shape
    x = images_bhwc.reshape(b, h // patch, patch, w // patch, patch, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


@MODELS.register("vit")
class ViT(nnx.Module):
    """images [b, h, w, c] -> logits [b, classes]: patch embed, learned positions, blocks, mean pool."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        check_heads(cfg)
        if cfg.get("scan_layers", False):
            raise ConfigError("model.scan_layers=True is built for the decoder LM (model.name="
                              "lm) only; set model.scan_layers=False for the ViT")
        if cfg.image_size % cfg.patch_size:
            raise ConfigError(f"model.image_size={cfg.image_size} is not divisible by "
                              f"model.patch_size={cfg.patch_size}")
        dtype = jnp.dtype(cfg.dtype)
        self.patch = cfg.patch_size
        patch_dim = cfg.patch_size ** 2 * cfg.channels
        self.embed = Dense(patch_dim, cfg.width, axes=(None, "embed"), rngs=rngs, dtype=dtype,
                           use_bias=True)
        self.positions = LearnedPositions(cfg, rngs=rngs)
        self.blocks = nnx.List([make_block(cfg, i, rngs=rngs) for i in range(cfg.depth)])
        self.final_norm = make_norm(cfg, rngs=rngs)
        self.head = Dense(cfg.width, cfg.num_classes, axes=("embed", None), rngs=rngs,
                          dtype=dtype, use_bias=True)

    def __call__(self, images_bhwc: jax.Array) -> jax.Array:
        x = self.embed(patchify(images_bhwc, self.patch))
        positions_bt = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        x = self.positions(x, positions_bt)
        for block in self.blocks:
            x = block(x, positions_bt=positions_bt)
        return self.head(self.final_norm(x).mean(axis=1)).astype(jnp.float32)
