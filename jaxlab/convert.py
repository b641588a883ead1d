"""Weight surgery between arithmetically equivalent models (Jiang et al. 2023, Pre-(C)RMSNorm).

In a Pre-LN Transformer the mean of the residual stream is never read: every read goes through
a LayerNorm, which removes it. So:

1. fold each norm's γ, β (and a LayerNorm-Scaling factor) into the Dense layers that read it
   (kernel rows scaled by γ, a bias βW added);
2. recenter what writes the stream (token and learned position tables, attention output and
   FFN down projections): W ← W(I − 11ᵀ/d). The stream is then zero-mean and LayerNorm without
   affine *is* RMSNorm without affine: `preln_to_prermsnorm`;
3. a zero-mean d-vector is fixed by its first d−1 coordinates, x_d = −Σ x_i. Dropping the last
   column of every writer and replacing each reader's kernel W by W[:−1] − W[−1] gives a
   (d−1)-wide stream normalized by CRMSNorm: `preln_to_precrmsnorm`.

`fold_repbn` folds eval-mode RepBN/PRepBN norms into the Dense layers that read them (SLAB).

All return a new model (the input is untouched); the head becomes an untied biased Dense. They
accept the decoder LM built with norm_position pre (or mix with no Post-LN layer), LayerNorm or
RMSNorm, softmax attention with plain Dense projections, and mlp/glu FFNs. Arithmetic runs in
float64 when jax_enable_x64 is on, so float64 models stay equivalent to ~1e-12.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlab.layers.attention import SoftmaxAttention
from jaxlab.layers.blocks import PeriNorm, PreNorm
from jaxlab.layers.common import Dense
from jaxlab.layers.embed import LearnedPositions, RotaryPositions
from jaxlab.layers.ffn import GLU, MLP
from jaxlab.layers.norms import CRMSNorm, LayerNorm, ProgressiveRepBN, RepBN, RMSNorm
from jaxlab.ops import norms as norm_ops


def preln_to_prermsnorm(model: nnx.Module) -> nnx.Module:
    """An equivalent model whose norms are affine-free RMSNorm over a zero-mean stream."""
    return _convert(model, compress=False)


def preln_to_precrmsnorm(model: nnx.Module) -> nnx.Module:
    """An equivalent model with a (d−1)-wide stream and affine-free CRMSNorm."""
    return _convert(model, compress=True)


def _wide(x) -> jax.Array:
    # float64 when x64 is enabled, else float32: the surgery's own rounding stays below the model's.
    return jnp.asarray(x, jax.dtypes.canonicalize_dtype(jnp.float64))


def _center(w_out_d: jax.Array) -> jax.Array:
    """Rows of a stream writer made zero-mean: W(I − 11ᵀ/d)."""
    return w_out_d - w_out_d.mean(-1, keepdims=True)


class _Surgery:
    def __init__(self, compress: bool):
        self.compress = compress

    def writer(self, w: jax.Array) -> jax.Array:
        """Last axis is the stream: center it, and drop its last coordinate when compressing."""
        w = _center(_wide(w))
        return w[..., :-1] if self.compress else w

    def reader(self, norm: nnx.Module, factor: float, dense: Dense) -> Dense:
        """The Dense that reads norm(x)·factor, with γ, β, factor folded in (and compressed)."""
        d = dense.kernel.shape[0]
        gamma = _wide(np.ones(d) if getattr(norm, "scale", None) is None else norm.scale[...])
        beta = _wide(np.zeros(d) if getattr(norm, "bias", None) is None else norm.bias[...])
        return _fold(gamma * factor, beta * factor, dense, compress=self.compress)

    def norm(self, old: nnx.Module) -> nnx.Module:
        kind = CRMSNorm if self.compress else RMSNorm
        return kind(1, rngs=nnx.Rngs(0), use_scale=False, eps=old.eps)


def _fold(a: jax.Array, c: jax.Array, dense: Dense, *, compress: bool = False) -> Dense:
    """The Dense equal to dense(a ⊙ x + c), reading x's first d−1 coordinates when compressing."""
    kernel, bias = norm_ops.fold_affine_into_dense(
        a, c, _wide(dense.kernel[...]), None if dense.bias is None else _wide(dense.bias[...]))
    if compress:
        kernel = kernel[:-1] - kernel[-1:]
    return _dense(kernel, bias, dense)


def _dense(kernel: jax.Array, bias: jax.Array | None, like: Dense) -> Dense:
    axes = like.kernel.get_metadata().get("axes")
    # Built abstractly: its random init would be thrown away at once.
    new = nnx.eval_shape(lambda: Dense(kernel.shape[0], kernel.shape[1], axes=axes,
                                       rngs=nnx.Rngs(0), use_bias=bias is not None,
                                       dtype=like.dtype))
    new.kernel = nnx.Param(kernel, axes=axes)
    if bias is not None:
        new.bias = nnx.Param(bias, axes=axes[1:])
    return new


def _check(model: nnx.Module) -> None:
    def refuse(what):
        raise ValueError(f"convert supports Pre-LN decoder LMs only; found {what}")

    for name in ("embed", "blocks", "final_norm", "head", "positions"):
        if not hasattr(model, name):
            refuse(f"a model without `{name}` ({type(model).__name__})")
    if model.final_norm is None:
        refuse("no final norm (a Post-LN layer)")
    if not isinstance(model.positions, (LearnedPositions, RotaryPositions)):
        refuse(f"positions {type(model.positions).__name__}")
    norms = [model.final_norm]
    for block in model.blocks:
        if getattr(block, "embedding_norm", None) is not None:
            refuse("an embedding norm (Peri-LN)")
        for wrapper in (block.attention, block.ffn):
            if type(wrapper) is not PreNorm:
                refuse(f"norm position {type(wrapper).__name__}")
            norms.append(wrapper.norm)
        attn, ffn = block.attention.sublayer, block.ffn.sublayer
        if type(attn) is not SoftmaxAttention or attn.q_norm is not None:
            refuse(f"attention {type(attn).__name__} (or qk-norm)")
        if type(ffn) not in (MLP, GLU):
            refuse(f"ffn {type(ffn).__name__}")
        denses = [attn.q, attn.k, attn.v, attn.o, ffn.up, ffn.down] + (
            [ffn.gate] if isinstance(ffn, GLU) else [])
        if any(type(d) is not Dense for d in denses):
            refuse("a reparametrized Dense")
    if any(type(n) not in (LayerNorm, RMSNorm) for n in norms):
        refuse(f"norm kinds {sorted({type(n).__name__ for n in norms})}")
    if any(type(n) is RMSNorm for n in norms):
        # RMSNorm reads the mean, so only an already-centered stream may use it.
        if not all(type(n) is RMSNorm and n.scale is None for n in norms):
            refuse("RMSNorm with a learnable scale or mixed with LayerNorm")


def _convert(model: nnx.Module, *, compress: bool) -> nnx.Module:
    _check(model)
    surgery = _Surgery(compress)
    new = nnx.clone(model)
    table = new.embed.table
    new.embed.table = nnx.Param(surgery.writer(table[...]), axes=table.get_metadata().get("axes"))
    if isinstance(new.positions, LearnedPositions):
        pos = new.positions.table
        new.positions.table = nnx.Param(surgery.writer(pos[...]),
                                        axes=pos.get_metadata().get("axes"))
    for block in new.blocks:
        attn_wrap, ffn_wrap = block.attention, block.ffn
        attn, ffn = attn_wrap.sublayer, ffn_wrap.sublayer
        for name in ("q", "k", "v"):
            reader = surgery.reader(attn_wrap.norm, attn_wrap.scale, getattr(attn, name))
            setattr(attn, name, reader)
        for name in ("gate", "up") if isinstance(ffn, GLU) else ("up",):
            setattr(ffn, name, surgery.reader(ffn_wrap.norm, ffn_wrap.scale, getattr(ffn, name)))
        for sub, name in ((attn, "o"), (ffn, "down")):
            old = getattr(sub, name)
            bias = None if old.bias is None else surgery.writer(old.bias[...])
            setattr(sub, name, _dense(surgery.writer(old.kernel[...]), bias, old))
        for wrapper in (attn_wrap, ffn_wrap):
            wrapper.norm = surgery.norm(wrapper.norm)
            wrapper.scale = 1.0
    head = (model.head if model.head is not None else
            _dense(_wide(model.embed.table[...]).T, None,
                   nnx.eval_shape(lambda: Dense(1, 1, axes=("embed", "vocab"), rngs=nnx.Rngs(0),
                                                dtype=model.embed.dtype))))
    new.head = nnx.data(surgery.reader(model.final_norm, 1.0, head))  # was None when tied
    new.final_norm = surgery.norm(model.final_norm)
    return new


class Identity(nnx.Module):
    """Stands where a folded norm was."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def fold_repbn(model: nnx.Module) -> nnx.Module:
    """An eval-time copy with every RepBN/PRepBN that feeds Dense layers folded into them.

    At eval both norms are RepBN with running statistics, an affine map a ⊙ x + c
    (RepBN.eval_affine), so the Dense layers that read it absorb it: W' = diag(a)·W, b' = c·W + b.
    Folded: the input norms of pre/peri placements (into q, k, v or the FFN's input
    projections, with any LayerNorm-Scaling factor) and the final norm (into an untied head).
    Norms followed by a residual add (post, peri's output norm) stay as they are.
    """
    new = nnx.clone(model)
    for block in new.blocks:
        for wrapper in (block.attention, block.ffn):
            if not isinstance(wrapper, (PreNorm, PeriNorm)) or not _is_repbn(wrapper.norm):
                continue
            a, c = _eval_affine(wrapper.norm, wrapper.scale)
            sub = wrapper.sublayer
            for name in _input_projections(sub):
                if type(getattr(sub, name)) is not Dense:
                    raise ValueError(f"fold_repbn needs plain Dense layers; {name} is a "
                                     f"{type(getattr(sub, name)).__name__}")
                setattr(sub, name, _fold(a, c, getattr(sub, name)))
            wrapper.norm, wrapper.scale = Identity(), 1.0
    if getattr(new, "final_norm", None) is not None and _is_repbn(new.final_norm):
        head = (new.head if new.head is not None else
                _dense(_wide(new.embed.table[...]).T, None,
                       nnx.eval_shape(lambda: Dense(1, 1, axes=("embed", "vocab"),
                                                    rngs=nnx.Rngs(0), dtype=new.embed.dtype))))
        a, c = _eval_affine(new.final_norm, 1.0)
        new.head = nnx.data(_fold(a, c, head))
        new.final_norm = Identity()
    return new


def _is_repbn(norm: nnx.Module) -> bool:
    return isinstance(norm, (RepBN, ProgressiveRepBN))


def _eval_affine(norm: nnx.Module, factor: float) -> tuple[jax.Array, jax.Array]:
    rep_bn = norm.rep_bn if isinstance(norm, ProgressiveRepBN) else norm
    a, c = rep_bn.eval_affine()
    return _wide(a) * factor, _wide(c) * factor


def _input_projections(sublayer: nnx.Module) -> tuple[str, ...]:
    if isinstance(sublayer, SoftmaxAttention):
        return ("q", "k", "v")
    if isinstance(sublayer, (MLP, GLU)):
        return ("gate", "up") if isinstance(sublayer, GLU) else ("up",)
    raise ValueError(f"fold_repbn cannot fold into a {type(sublayer).__name__}; "
                     "it knows softmax attention, mlp and glu")
