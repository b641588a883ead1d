"""Scan over layers for the decoder LM.

`model.scan_layers=True` runs the identical blocks as one jax.lax.scan over parameters stacked
along a leading layer axis (`ScannedBlocks`), so the train step compiles one block body whatever
the depth; `model.remat` then applies inside the scanned body. The parameter layout differs:
`params/blocks/<i>/...` becomes `params/blocks/layers/...` with a leading [depth] axis (logical
axis "layers", replicated by the default sharding rules), and Peri-LN's embedding norm moves from
`blocks/0/embedding_norm` to `blocks/embedding_norm`. A checkpoint therefore restores only into
the layout it was written with; `stack_layers` / `unstack_layers` convert a model between
layouts with the same weights, and a seed gives the same weights in both. Per-layer options a
single traced body cannot express (LayerNorm Scaling, a Post/Pre Mix-LN, an attention schedule
of several kinds) are refused with a ConfigError.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.attention_schedule import attention_kind
from jaxlab.layers.blocks import num_post_layers


def check_scan_layers(cfg) -> bool:
    """Whether `model.scan_layers` is on; refuses the per-layer options a scan cannot express
    (every scanned layer runs one traced body, so Python-level per-layer choices must agree)."""
    scan = cfg.get("scan_layers", False)
    if scan not in (True, False):
        raise ConfigError(f"model.scan_layers={scan!r} must be True or False")
    if not scan:
        return False
    if cfg.get("layernorm_scaling", False) and cfg.norm_position != "post" and cfg.depth > 1:
        raise ConfigError("model.scan_layers=True cannot scan model.layernorm_scaling=True (its "
                          "1/sqrt(layer) factor differs per layer); set one of them to False")
    if cfg.norm_position == "mix" and 0 < num_post_layers(cfg) < cfg.depth:
        raise ConfigError(f"model.scan_layers=True cannot scan model.norm_position='mix' with "
                          f"{num_post_layers(cfg)} Post-LN and {cfg.depth - num_post_layers(cfg)} "
                          f"Pre-LN layers; valid: model.mix_post_layers=0 or {cfg.depth} "
                          f"(one kind of layer), or model.scan_layers=False")
    kinds = sorted({attention_kind(cfg, i) for i in range(cfg.depth)})
    if len(kinds) > 1:
        raise ConfigError(f"model.scan_layers=True cannot scan model.attention_schedule="
                          f"{cfg.attention_schedule!r} (layers use {', '.join(kinds)}); valid: an "
                          f"empty schedule or one kind, or model.scan_layers=False")
    return True


class ScannedBlocks(nnx.Module):
    """`depth` identical blocks stored as one block whose variables carry a leading layer axis
    (logical name "layers"), run as one jax.lax.scan so the step compiles one block, not depth.

    A norm on the embedding output (Peri-LN's, owned by block 0 in the per-layer layout) is held
    here as `embedding_norm`, so the stacked blocks are identical. `unstack_layers` and
    `stack_layers` convert a model between the two layouts with the same weights.
    """

    def __init__(self, blocks):
        blocks = list(blocks)
        self.embedding_norm = getattr(blocks[0], "embedding_norm", None)
        if self.embedding_norm is not None:
            del blocks[0].embedding_norm  # re-added as a static None, as in the other blocks
            blocks[0].embedding_norm = None
        graphdefs, states = zip(*(nnx.split(block) for block in blocks))
        for i, graphdef in enumerate(graphdefs):
            if graphdef != graphdefs[0]:
                raise ConfigError(f"model.scan_layers=True needs identical blocks, but block {i} "
                                  f"differs from block 0; set model.scan_layers=False")
        stacked = jax.tree.map(_stack_variables, *states, is_leaf=_is_variable)
        self.layers = nnx.merge(graphdefs[0], stacked)
        self.depth = len(blocks)

    def __call__(self, x_btd: jax.Array, *, remat=None, **block_kwargs) -> jax.Array:
        if self.embedding_norm is not None:
            x_btd = self.embedding_norm(x_btd)
        graphdef, params, rest = nnx.split(self.layers, nnx.Param, ...)

        def body(x, layer):
            block = nnx.merge(graphdef, *layer)
            x = block(x, **block_kwargs)
            # Only non-parameter state (running statistics, decode caches) comes back out.
            return x, nnx.split(block, nnx.Param, ...)[2]

        if remat is not None:
            body = jax.checkpoint(body, policy=remat, prevent_cse=False)
        x_btd, rest = jax.lax.scan(body, x_btd, (params, rest))
        nnx.update(self.layers, rest)
        return x_btd

    def unstack(self) -> list:
        """The per-layer blocks (copies), block 0 owning the embedding norm again."""
        graphdef, state = nnx.split(self.layers)
        blocks = [nnx.merge(graphdef, jax.tree.map(lambda v, i=i: _slice_variable(v, i), state,
                                                   is_leaf=_is_variable))
                  for i in range(self.depth)]
        if self.embedding_norm is not None:
            del blocks[0].embedding_norm
            blocks[0].embedding_norm = nnx.data(nnx.merge(*nnx.split(self.embedding_norm)))
        return blocks

    def init_cache(self, batch: int, max_len: int) -> None:
        """Decode caches for every layer: one layer's caches, repeated along the layer axis."""
        graphdef, state = nnx.split(self.layers)
        one = nnx.merge(graphdef, jax.tree.map(lambda v: _slice_variable(v, 0), state,
                                               is_leaf=_is_variable))
        for _, module in list(nnx.iter_modules(one)):
            if hasattr(module, "init_cache"):
                module.init_cache(batch, max_len)
        graphdef, caches, _ = nnx.split(one, nnx.Cache, ...)
        _, _, others = nnx.split(self.layers, nnx.Cache, ...)
        caches = jax.tree.map(lambda v: v.replace(jnp.repeat(v[...][None], self.depth, 0)),
                              caches, is_leaf=_is_variable)
        self.layers = nnx.merge(graphdef, caches, others)

    def __iter__(self):
        raise TypeError("model.scan_layers=True stores the blocks stacked; iterate over "
                        "jaxlab.models.scan.unstack_layers(model).blocks instead")

    __getitem__ = __iter__


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _stack_variables(*variables):
    first = variables[0]
    axes = first.get_metadata().get("axes")
    metadata = {} if axes is None else {"axes": ("layers", *axes)}
    return first.replace(jnp.stack([v[...] for v in variables]), **metadata)


def _slice_variable(variable, i: int):
    axes = variable.get_metadata().get("axes")
    metadata = {} if axes is None else {"axes": tuple(axes[1:])}
    return variable.replace(variable[...][i], **metadata)


def unstack_layers(model: nnx.Module) -> nnx.Module:
    """A copy of a scanned model in the per-layer layout (`blocks` a list), same weights; a
    per-layer model comes back unchanged. For code that walks the blocks one by one."""
    if not isinstance(getattr(model, "blocks", None), ScannedBlocks):
        return model
    copy = nnx.merge(*nnx.split(model))
    copy.blocks = nnx.List(copy.blocks.unstack())
    return copy


def stack_layers(model: nnx.Module) -> nnx.Module:
    """A copy of a per-layer model in the scanned layout, same weights (the inverse of
    `unstack_layers`); a scanned model comes back unchanged."""
    if isinstance(model.blocks, ScannedBlocks):
        return model
    copy = nnx.merge(*nnx.split(model))
    copy.blocks = ScannedBlocks(copy.blocks)
    return copy
