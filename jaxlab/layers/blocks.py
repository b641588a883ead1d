"""Residual blocks and norm placements (`model.norm_position`).

A norm position wraps one sublayer (attention or FFN) with its residual connection and
norms, so a new placement is one registered entry. It is built as
Position(sublayer, cfg, layer_index, rngs=...) and tells the model whether it needs a final norm
before the head (`final_norm`, or `needs_final_norm(cfg)` when that depends on the config).

LayerNorm Scaling (`model.layernorm_scaling`, "The Curse of Depth") multiplies every pre-norm
output of layer ℓ (1-based) by 1/√ℓ. The factor is a Python float fixed at construction, never
a variable: a stored scale is exactly what a silent re-initialisation bug erased in OLMo-core.
"""
from __future__ import annotations

import math

import jax
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.attention_schedule import attention_kind
from jaxlab.registry import ATTENTION, FFN, NORM, NORM_POSITION


def make_norm(cfg, *, rngs: nnx.Rngs, dim: int | None = None) -> nnx.Module:
    """The configured norm kind over `dim` (default the model width)."""
    kind = NORM.get(cfg.norm)
    kwargs = kind.config_kwargs(cfg) if hasattr(kind, "config_kwargs") else {}
    if not cfg.get("norm_affine", True):
        kwargs.update(use_scale=False, use_bias=False)
    return kind(cfg.width if dim is None else dim, rngs=rngs, **kwargs)


def embedding_norm(position, cfg, layer_index: int, *, rngs: nnx.Rngs) -> nnx.Module | None:
    """The norm on the embedding output that some placements (Peri-LN) ask for; the first
    block owns it, so models need not know about it."""
    if layer_index == 0 and getattr(position, "embedding_norm", False):
        return make_norm(cfg, rngs=rngs)
    return None


def depth_scale(cfg, layer_index: int) -> float:
    """1/√ℓ with ℓ = layer_index + 1 under LayerNorm Scaling, else 1."""
    return 1.0 / math.sqrt(layer_index + 1) if cfg.get("layernorm_scaling", False) else 1.0


def _scaled(x: jax.Array, factor: float) -> jax.Array:
    # Skipping the multiply at 1.0 keeps layer 1 (and LNS off) bit-identical to plain Pre-LN.
    return x if factor == 1.0 else x * factor


@NORM_POSITION.register("pre")
class PreNorm(nnx.Module):
    """x + f(norm(x)·s); the stream itself is normalized once more before the head."""
    final_norm = True

    def __init__(self, sublayer: nnx.Module, cfg, layer_index: int, *, rngs: nnx.Rngs):
        self.norm = make_norm(cfg, rngs=rngs)
        self.sublayer = sublayer
        self.scale = depth_scale(cfg, layer_index)

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        return x + self.sublayer(_scaled(self.norm(x), self.scale), **kwargs)


@NORM_POSITION.register("post")
class PostNorm(nnx.Module):
    """norm(x + f(x)), as in the original Transformer; the output is already normalized."""
    final_norm = False

    def __init__(self, sublayer: nnx.Module, cfg, layer_index: int, *, rngs: nnx.Rngs):
        del layer_index  # LayerNorm Scaling acts on pre-norms only
        self.norm = make_norm(cfg, rngs=rngs)
        self.sublayer = sublayer

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        return self.norm(x + self.sublayer(x, **kwargs))


@NORM_POSITION.register("peri")
class PeriNorm(nnx.Module):
    """x + norm_out(f(norm_in(x)·s)) (Peri-LN, Kim et al. 2025); the block also normalizes the
    embeddings (see Block) and the model applies a final norm."""
    final_norm = True
    embedding_norm = True

    def __init__(self, sublayer: nnx.Module, cfg, layer_index: int, *, rngs: nnx.Rngs):
        self.norm = make_norm(cfg, rngs=rngs)
        self.sublayer = sublayer
        self.out_norm = make_norm(cfg, rngs=rngs)
        self.scale = depth_scale(cfg, layer_index)

    def __call__(self, x: jax.Array, **kwargs) -> jax.Array:
        return x + self.out_norm(self.sublayer(_scaled(self.norm(x), self.scale), **kwargs))


def num_post_layers(cfg) -> int:
    """Mix-LN's Post-LN layer count: model.mix_post_layers when ≥ 0, else ⌊α·depth⌋."""
    explicit = int(cfg.get("mix_post_layers", -1))
    if explicit >= 0:
        return min(explicit, cfg.depth)
    alpha = float(cfg.get("mix_alpha", 0.25))
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"model.mix_alpha={alpha} must lie in [0, 1]")
    return math.floor(alpha * cfg.depth)


def mix_norm(sublayer: nnx.Module, cfg, layer_index: int, *, rngs: nnx.Rngs) -> nnx.Module:
    """Mix-LN (Li et al. 2024): Post-LN in the first num_post_layers(cfg) layers, Pre-LN after."""
    position = PostNorm if layer_index < num_post_layers(cfg) else PreNorm
    return position(sublayer, cfg, layer_index, rngs=rngs)


mix_norm.final_norm = True
mix_norm.needs_final_norm = lambda cfg: num_post_layers(cfg) < cfg.depth
NORM_POSITION.register("mix")(mix_norm)


def needs_final_norm(cfg) -> bool:
    """Whether the model ends with a norm before the head (Pre-LN style placements do)."""
    position = NORM_POSITION.get(cfg.norm_position)
    if hasattr(position, "needs_final_norm"):
        return position.needs_final_norm(cfg)
    return position.final_norm


class Block(nnx.Module):
    """One Transformer layer: attention then FFN, each inside the configured norm position.

    Layer 0 of a position with `embedding_norm` (Peri-LN) also normalizes its input, which is
    the embedding output.
    """

    def __init__(self, cfg, layer_index: int, *, rngs: nnx.Rngs):
        position = NORM_POSITION.get(cfg.norm_position)
        attention = ATTENTION.get(attention_kind(cfg, layer_index))(cfg, rngs=rngs)
        ffn = FFN.get(cfg.ffn)(cfg, rngs=rngs)
        self.attention = position(attention, cfg, layer_index, rngs=rngs)
        self.ffn = position(ffn, cfg, layer_index, rngs=rngs)
        self.embedding_norm = embedding_norm(position, cfg, layer_index, rngs=rngs)

    def __call__(self, x_btd: jax.Array, **attention_kwargs) -> jax.Array:
        if self.embedding_norm is not None:
            x_btd = self.embedding_norm(x_btd)
        return self.ffn(self.attention(x_btd, **attention_kwargs))
