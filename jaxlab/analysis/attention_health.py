"""Per-head attention entropy and max logit (σReparam's entropy collapse, qk-norm's logit growth).

    from jaxlab.analysis import attention_health
    stats = attention_health.attention_stats(model, tokens)
    stats["entropy"], stats["max_logit"]                      # [layers, heads] each

The statistics are read where the softmax is taken: during one eager forward pass,
`jaxlab.ops.attention.softmax_attention` is wrapped to record its q and k (after qk-norm and
RoPE), so any attention kind built on that op is covered without knowing its internals.
"""
from __future__ import annotations

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlab.ops import attention as attention_ops


def head_entropy_and_max_logit(logits_bhts: jax.Array, mask_bhts: jax.Array | None
                               ) -> tuple[jax.Array, jax.Array]:
    """[H] mean over queries of −Σ_s p log p, and [H] max logit over allowed positions."""
    logits = logits_bhts.astype(jnp.float32)
    allowed = jnp.ones_like(logits, bool) if mask_bhts is None else jnp.broadcast_to(
        mask_bhts, logits.shape)
    masked = jnp.where(allowed, logits, -jnp.inf)
    log_p = jax.nn.log_softmax(masked, axis=-1)
    p = jnp.exp(log_p)
    entropy = -jnp.sum(jnp.where(allowed, p * log_p, 0.0), axis=-1)  # [b, h, t]
    has_keys = jnp.any(allowed, axis=-1)
    mean_entropy = (jnp.sum(jnp.where(has_keys, entropy, 0.0), axis=(0, 2))
                    / jnp.maximum(jnp.sum(has_keys, axis=(0, 2)), 1))
    return mean_entropy, jnp.max(masked, axis=(0, 2, 3))


def _logits(q_bthd, k_bshd, scale, softcap):
    h, h_kv = q_bthd.shape[2], k_bshd.shape[2]
    k_full = jnp.repeat(k_bshd, h // h_kv, axis=2)  # q head j reads kv head j // (h / h_kv)
    logits = jnp.einsum("bthd,bshd->bhts", q_bthd.astype(jnp.float32), k_full.astype(jnp.float32))
    logits = logits * (q_bthd.shape[-1] ** -0.5 if scale is None else scale)
    return softcap * jnp.tanh(logits / softcap) if softcap else logits


@contextlib.contextmanager
def _recording_softmax(records: list):
    original = attention_ops.softmax_attention

    def recording(q, k, v, *, causal=False, key_mask_bs=None, scale=None, softcap=0.0, **kw):
        mask = attention_ops.attention_mask(q.shape[1], k.shape[1], causal=causal,
                                            key_mask_bs=key_mask_bs)
        records.append(head_entropy_and_max_logit(_logits(q, k, scale, softcap), mask))
        return original(q, k, v, causal=causal, key_mask_bs=key_mask_bs, scale=scale,
                        softcap=softcap, **kw)

    attention_ops.softmax_attention = recording
    try:
        yield
    finally:
        attention_ops.softmax_attention = original


def attention_stats(model: nnx.Module, inputs: Any) -> dict[str, np.ndarray]:
    """{"entropy": [L, H], "max_logit": [L, H]} over one forward pass, one row per softmax call
    (one per layer for the softmax attention kinds)."""
    records: list = []
    with _recording_softmax(records):
        model(inputs)
    if not records:
        raise ValueError("the model took no softmax attention (a linear kind?): nothing to measure")
    return {"entropy": np.stack([np.asarray(e) for e, _ in records]),
            "max_logit": np.stack([np.asarray(m) for _, m in records])}
