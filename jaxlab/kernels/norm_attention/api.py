"""fused_norm_attention(q, k, v, ...): the public op, with a custom VJP onto the Pallas kernels."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlab.errors import ConfigError
from jaxlab.kernels import dispatch
from jaxlab.kernels.norm_attention import pallas
from jaxlab.kernels.norm_attention.reference import (NORMALIZERS, QK_NORMS,
                                                     fused_norm_attention_reference)

OP = "fused_norm_attention"


def block_for(length: int, largest: int = 64) -> int:
    """A power of two ≥ 16 (Triton's smallest dot), at most `largest`, near the length."""
    block = 16
    while block < min(length, largest):
        block *= 2
    return block


def unsupported(head_dim: int) -> str | None:
    backend = jax.default_backend()
    if backend == "gpu" and (head_dim & (head_dim - 1) or head_dim < 16):
        return f"the Triton kernel needs a power-of-two head dim ≥ 16, got {head_dim}"
    if backend == "tpu":
        return "the kernel is written for the Triton lowering and not validated on TPU"
    return None


def fused_norm_attention(q, k, v, q_scale=None, k_scale=None, key_mask_bs=None, *,
                         qk_norm: str | None = None, normalizer: str = "softmax",
                         causal: bool = False, sm_scale: float | None = None, eps: float = 1e-6,
                         impl: str = "auto", block_q: int | None = None,
                         block_k: int | None = None):
    """Attention whose q and k are RMS/Layer-normalized over head_dim inside the kernel.

    q [b, t, h, d]; k, v [b, s, h_kv, d] (GQA when h_kv < h); q_scale, k_scale [d] (the norms'
    gains, default 1); key_mask_bs [b, s], True where a key may be seen; `normalizer` softmax
    or softplus (ℓ1-normalized Softplus scores; pass any length-dependent factor in sm_scale,
    default d^-1/2). Rows that see no key return 0. impl: see jaxlab.kernels.
    """
    if normalizer not in NORMALIZERS:
        raise ConfigError(f"normalizer {normalizer!r} is unknown; valid: {', '.join(NORMALIZERS)}")
    if qk_norm not in QK_NORMS:
        raise ConfigError(f"qk_norm {qk_norm!r} is unknown; valid: None, rms, layer")
    b, t, h, d = q.shape
    s_len, h_kv = k.shape[1], k.shape[2]
    if h % h_kv:
        raise ConfigError(f"query heads {h} must be a multiple of key/value heads {h_kv}")
    try:
        path = dispatch.resolve(OP, impl, unsupported(d))
    except dispatch.Unsupported as error:
        raise ConfigError(str(error)) from None
    if path == "xla":
        return fused_norm_attention_reference(
            q, k, v, q_scale, k_scale, key_mask_bs, qk_norm=qk_norm, normalizer=normalizer,
            causal=causal, sm_scale=sm_scale, eps=eps)
    g = pallas.Geometry(block_q=block_q or block_for(t), block_k=block_k or block_for(s_len),
                        q_len=t, k_len=s_len, group=h // h_kv, causal=causal,
                        normalizer=normalizer, qk_norm=qk_norm,
                        sm_scale=float(d ** -0.5 if sm_scale is None else sm_scale), eps=eps)
    ones = jnp.ones((d,), jnp.float32)
    keys = jnp.ones((b, s_len), jnp.float32) if key_mask_bs is None else key_mask_bs.astype(jnp.float32)
    kmask = jnp.pad(keys, ((0, 0), (0, _padded(s_len, g.block_k) - s_len)))
    return _attention(q, k, v, ones if q_scale is None else q_scale,
                      ones if k_scale is None else k_scale, kmask, g, path == "interpret")


def _padded(n: int, block: int) -> int:
    return -(-n // block) * block


def _to_kernel_layout(x, block):
    """[b, t, h, d] -> [b, h, t_padded, d] with zero rows at the end."""
    x = jnp.swapaxes(x, 1, 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, _padded(x.shape[2], block) - x.shape[2]), (0, 0)))


def _from_kernel_layout(x, length):
    return jnp.swapaxes(x[:, :, :length], 1, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _attention(q, k, v, q_scale, k_scale, kmask, g, interpret):
    return _attention_fwd(q, k, v, q_scale, k_scale, kmask, g, interpret)[0]


def _attention_fwd(q, k, v, q_scale, k_scale, kmask, g, interpret):
    qk, kk, vk = (_to_kernel_layout(q, g.block_q), _to_kernel_layout(k, g.block_k),
                  _to_kernel_layout(v, g.block_k))
    out, stat = pallas.forward(qk, kk, vk, kmask, q_scale, k_scale, g=g, interpret=interpret)
    return _from_kernel_layout(out, g.q_len), (qk, kk, vk, kmask, q_scale, k_scale, out, stat)


def _attention_bwd(g, interpret, saved, dout):
    qk, kk, vk, kmask, q_scale, k_scale, out, stat = saved
    dq, dk, dv, dqs, dks = pallas.backward(qk, kk, vk, kmask, q_scale, k_scale, out, stat,
                                           _to_kernel_layout(dout, g.block_q), g=g,
                                           interpret=interpret)
    return (_from_kernel_layout(dq, g.q_len), _from_kernel_layout(dk, g.k_len),
            _from_kernel_layout(dv, g.k_len), dqs.astype(q_scale.dtype),
            dks.astype(k_scale.dtype), jnp.zeros_like(kmask))


_attention.defvjp(_attention_fwd, _attention_bwd)
