"""Attention kinds for `model.attention`; each is built as Attention(cfg, rngs=...) from model cfg."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.layers.common import Dense
from jaxlab.ops import attention as attention_ops
from jaxlab.registry import ATTENTION


def head_counts(cfg) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim) from the model config."""
    heads = cfg.num_heads
    kv_heads = cfg.get("num_kv_heads") or heads
    return heads, kv_heads, cfg.width // heads


@ATTENTION.register("softmax")
class SoftmaxAttention(nnx.Module):
    """Multi-head softmax attention with grouped-query heads and optional rotary positions.

    Called as attn(x_btd, positions_bt=..., key_mask_bs=None); `cfg.causal` picks the mask.
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        heads, kv_heads, head_dim = head_counts(cfg)
        dtype = jnp.dtype(cfg.dtype)
        self.q = Dense(cfg.width, heads * head_dim, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.k = Dense(cfg.width, kv_heads * head_dim, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.v = Dense(cfg.width, kv_heads * head_dim, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.o = Dense(heads * head_dim, cfg.width, axes=("heads", "embed"), rngs=rngs, dtype=dtype)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.causal = bool(cfg.get("causal", True))
        self.rope_base = float(cfg.rope_base) if cfg.get("position") == "rope" else None

    def __call__(self, x_btd: jax.Array, *, positions_bt: jax.Array,
                 key_mask_bs: jax.Array | None = None) -> jax.Array:
        b, t, _ = x_btd.shape
        q = self.q(x_btd).reshape(b, t, self.heads, self.head_dim)
        k = self.k(x_btd).reshape(b, t, self.kv_heads, self.head_dim)
        v = self.v(x_btd).reshape(b, t, self.kv_heads, self.head_dim)
        if self.rope_base is not None:
            q = attention_ops.apply_rope(q, positions_bt, self.rope_base)
            k = attention_ops.apply_rope(k, positions_bt, self.rope_base)
        out = attention_ops.softmax_attention(q, k, v, causal=self.causal, key_mask_bs=key_mask_bs)
        return self.o(out.reshape(b, t, self.heads * self.head_dim))
