"""chunked_linear_attention(q, k, v, ...): the public op, with a custom VJP onto the kernels."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlab.errors import ConfigError
from jaxlab.kernels import dispatch
from jaxlab.kernels.linear_attention import pallas
from jaxlab.kernels.linear_attention.reference import (KERNEL_FEATURE_MAPS,
                                                       chunked_linear_attention_reference)

OP = "chunked_linear_attention"


def unsupported(key_dim: int, value_dim: int, chunk: int, itemsize: int = 4) -> str | None:
    """Why the Pallas kernel cannot take these sizes on this backend, or None if it can. The
    sequence length does not matter: every block is one chunk's."""
    backend = dispatch.backend()
    dims = (key_dim, value_dim, chunk)
    if backend == "gpu" and any(x & (x - 1) or x < 16 for x in dims):
        return f"the Triton kernel needs power-of-two sizes ≥ 16, got dk, dv, chunk = {dims}"
    if backend == "tpu":
        if chunk % 8:
            return f"the TPU kernel needs a chunk that is a multiple of 8 (sublanes), got {chunk}"
        return dispatch.over_vmem("chunks", _tpu_vmem_bytes(key_dim, value_dim, chunk, itemsize))
    return None


def _tpu_vmem_bytes(dk: int, dv: int, chunk: int, itemsize: int) -> int:
    """About the VMEM of the dQ kernel, the largest: one chunk of q, k, v, d out, dq, G and the
    H slab, the float32 state and its gradient, double-buffered, plus float32 chunk tiles."""
    per_row = 3 * dk * itemsize + 2 * dv * itemsize + dv * 4 + 128 * 4
    per_chunk = 2 * dk * dv * 4 + 3 * (dk + dv) * 4
    scratch = 6 * chunk * max(chunk, dk, dv) * 4
    return 2 * (chunk * per_row + per_chunk) + scratch


def chunked_linear_attention(q, k, v, gain=None, *, feature_map: str = "elu1",
                             normalize: bool = True, scale: float = 1.0, eps: float = 1e-6,
                             output_norm: bool = False, norm_eps: float = 1e-6,
                             chunk_size: int = 64, impl: str = "auto"):
    """Causal linear attention o_t = φ(q_t)·Σ_{j≤t} φ(k_j) v_jᵀ / φ(q_t)·Σ_{j≤t} φ(k_j).

    q, k [b, t, h, dk]; v [b, t, h, dv]; normalize=False multiplies by `scale` instead of
    dividing by the denominator; output_norm adds an RMSNorm over dv with `gain` [dv] (with
    normalize=False this is TransNormer's NormAttention). Any t: the kernel pads to chunks.
    """
    if feature_map not in KERNEL_FEATURE_MAPS:
        raise ConfigError(f"feature map {feature_map!r} has no kernel; valid: "
                          f"{', '.join(KERNEL_FEATURE_MAPS)}")
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    try:
        path = dispatch.resolve(OP, impl, unsupported(dk, dv, chunk_size, q.dtype.itemsize))
    except dispatch.Unsupported as error:
        raise ConfigError(str(error)) from None
    options = dict(feature_map=feature_map, normalize=normalize, scale=scale, eps=eps,
                   output_norm=output_norm, norm_eps=norm_eps)
    if path == "xla":
        return chunked_linear_attention_reference(q, k, v, gain, **options)
    setup = pallas.Setup(chunk=chunk_size, lane_dense=dispatch.lane_dense(), **options)
    gain = jnp.ones((dv,), jnp.float32) if gain is None else gain
    return _attention(q, k, v, gain, setup, path == "interpret")


def _layout(x, chunk):
    """[b, t, h, d] -> [b, h, t_padded, d]."""
    x = jnp.swapaxes(x, 1, 2)
    pad = -x.shape[2] % chunk
    return jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)))


def _unlayout(x, t):
    return jnp.swapaxes(x[:, :, :t], 1, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _attention(q, k, v, gain, setup, interpret):
    return _attention_fwd(q, k, v, gain, setup, interpret)[0]


def _attention_fwd(q, k, v, gain, setup, interpret):
    qk, kk, vk = (_layout(x, setup.chunk) for x in (q, k, v))
    out = pallas.forward(qk, kk, vk, gain, s=setup, interpret=interpret)
    return _unlayout(out, q.shape[1]), (qk, kk, vk, gain)


def _attention_bwd(setup, interpret, saved, dout):
    qk, kk, vk, gain = saved
    t = dout.shape[1]
    dq, dk, dv, dgain = pallas.backward(qk, kk, vk, gain, _layout(dout, setup.chunk), s=setup,
                                        interpret=interpret)
    return _unlayout(dq, t), _unlayout(dk, t), _unlayout(dv, t), dgain.astype(gain.dtype)


_attention.defvjp(_attention_fwd, _attention_bwd)
