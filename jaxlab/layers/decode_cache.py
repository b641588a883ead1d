"""Decoding state kept inside attention modules as nnx.Cache variables.

An attention kind that supports decoding has `init_cache(batch, max_len)`, which creates its
cache, and reads and updates it when called with `decode=True`. `jaxlab.models.generate` works
on a copy of the model, so the caller's model never gains a cache.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.ops.linear_attention import LinearState, zero_state


def require_cache(module: nnx.Module):
    """The decode cache of `module`; a clear error when init_cache was not called first."""
    cache = getattr(module, "cache", None)
    if cache is None:
        raise ValueError(f"{type(module).__name__} was called with decode=True before init_cache")
    return cache


class KVCache(nnx.Module):
    """Keys and values of every position so far, [b, max_len, kv_heads, head_dim], one token a call."""

    def __init__(self, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype):
        shape = (batch, max_len, kv_heads, head_dim)
        self.keys = nnx.Cache(jnp.zeros(shape, dtype))
        self.values = nnx.Cache(jnp.zeros(shape, dtype))
        self.index = nnx.Cache(jnp.zeros((), jnp.int32))

    def append(self, k_b1hd: jax.Array, v_b1hd: jax.Array):
        """Stores one new position; returns (keys, values, key_mask_bs, position of the new token)."""
        if k_b1hd.shape[1] != 1:
            raise ValueError(f"KV-cache decoding takes one token per call, got {k_b1hd.shape[1]}")
        index = self.index[...]
        start = (0, index, 0, 0)
        self.keys[...] = jax.lax.dynamic_update_slice(self.keys[...], k_b1hd.astype(self.keys.dtype), start)
        self.values[...] = jax.lax.dynamic_update_slice(self.values[...], v_b1hd.astype(self.values.dtype), start)
        self.index[...] = index + 1
        batch, max_len = self.keys.shape[:2]
        visible_bs = jnp.broadcast_to(jnp.arange(max_len) <= index, (batch, max_len))
        return self.keys[...], self.values[...], visible_bs, index


class StateCache(nnx.Module):
    """The running LinearState of a linear-attention kind, plus an optional window of recent
    values for a causal convolution."""

    def __init__(self, batch: int, heads: int, key_dim: int, value_dim: int,
                 conv_history: tuple[int, int] | None = None):
        state = zero_state(batch, heads, key_dim, value_dim)
        self.kv = nnx.Cache(state.kv_bhkv)
        self.k = nnx.Cache(state.k_bhk)
        self.history = (nnx.Cache(jnp.zeros((batch, *conv_history), jnp.float32))
                        if conv_history else None)

    @property
    def state(self) -> LinearState:
        return LinearState(self.kv[...], self.k[...])

    def update(self, state: LinearState) -> None:
        self.kv[...], self.k[...] = state.kv_bhkv, state.k_bhk
