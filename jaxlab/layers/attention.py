"""Attention kinds for `model.attention`; each is built as Attention(cfg, rngs=...) from model cfg."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.kernels import dispatch
from jaxlab.kernels.norm_attention import fused_norm_attention
from jaxlab.kernels.norm_attention.api import GPU_KERNELS
from jaxlab.layers.common import dense
from jaxlab.layers.decode_cache import KVCache, require_cache
from jaxlab.layers.norms import qk_norms
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
        self.q = dense(cfg, cfg.width, heads * head_dim, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.k = dense(cfg, cfg.width, kv_heads * head_dim, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.v = dense(cfg, cfg.width, kv_heads * head_dim, axes=("embed", "heads"), rngs=rngs, dtype=dtype)
        self.o = dense(cfg, heads * head_dim, cfg.width, axes=("heads", "embed"), rngs=rngs, dtype=dtype)
        self.q_norm, self.k_norm = qk_norms(cfg, head_dim, rngs=rngs)  # (None, None) when off
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.causal = bool(cfg.get("causal", True))
        self.rope_base = float(cfg.rope_base) if cfg.get("position") == "rope" else None
        self.softcap = float(cfg.get("attention_softcap", 0.0))
        self.kernels = dispatch.check_impl(cfg.get("kernels", "xla"))
        self.gpu_kernel = cfg.get("attention_gpu_kernel", "auto")
        if self.gpu_kernel not in GPU_KERNELS:
            raise ConfigError(f"model.attention_gpu_kernel {self.gpu_kernel!r} is unknown; "
                              f"valid: {', '.join(GPU_KERNELS)}")
        self.cache = None  # a KVCache once init_cache runs (decoding only)

    def init_cache(self, batch: int, max_len: int) -> None:
        self.cache = nnx.data(KVCache(batch, max_len, self.kv_heads, self.head_dim, jnp.float32))

    def attend(self, q, k, v, *, causal: bool, key_mask_bs, position=None) -> jax.Array:
        """The attention math; other kinds of the softmax family override only this.
        `position` is the decoded token's index when reading a KV cache, else None."""
        if self.kernels != "xla" and position is None and not self.softcap:
            # The flash-style Pallas kernel (jaxlab.kernels); qk-norm and RoPE stay in XLA
            # because the rotation sits between the norm and the dot product.
            return fused_norm_attention(q, k, v, key_mask_bs=key_mask_bs, causal=causal,
                                        impl=self.kernels, gpu_kernel=self.gpu_kernel)
        return attention_ops.softmax_attention(q, k, v, causal=causal, key_mask_bs=key_mask_bs,
                                               softcap=self.softcap)

    def __call__(self, x_btd: jax.Array, *, positions_bt: jax.Array,
                 key_mask_bs: jax.Array | None = None, decode: bool = False) -> jax.Array:
        b, t, _ = x_btd.shape
        q = self.q(x_btd).reshape(b, t, self.heads, self.head_dim)
        k = self.k(x_btd).reshape(b, t, self.kv_heads, self.head_dim)
        if self.q_norm is not None:  # qk-norm acts per head, before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.v(x_btd).reshape(b, t, self.kv_heads, self.head_dim)
        if self.rope_base is not None:
            q = attention_ops.apply_rope(q, positions_bt, self.rope_base)
            k = attention_ops.apply_rope(k, positions_bt, self.rope_base)
        if decode:  # one new token against every cached one; padding masks do not apply
            k, v, key_mask_bs, position = require_cache(self).append(k, v)
            out = self.attend(q, k, v, causal=False, key_mask_bs=key_mask_bs, position=position)
        else:
            out = self.attend(q, k, v, causal=self.causal, key_mask_bs=key_mask_bs)
        return self.o(out.reshape(b, t, self.heads * self.head_dim))
