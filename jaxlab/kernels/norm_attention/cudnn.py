"""The GPU path that `impl="auto"` prefers for plain softmax norm-attention: the q/k norms in
XLA, then cuDNN's flash attention (jax.nn.dot_product_attention).

Our Triton kernel ran at 0.61-0.74× of exactly this pair on an H100 (bf16, causal, d=64 at
T=1k-8k, d=128 at 1k; benchmarks/RESULTS.md), so `auto` takes it wherever cuDNN takes the
call; `impl="pallas"` still forces the kernel. cuDNN has no softplus, length scale or segment
ids here, and takes what jaxlab.ops.attention.cudnn_flash_takes says, hence `takes`.
"""
from __future__ import annotations

import jax

from jaxlab.kernels import dispatch
from jaxlab.kernels.norm_attention.reference import head_norm
from jaxlab.ops.attention import cudnn_flash_takes

IMPLEMENTATION = "cudnn"  # jax.nn.dot_product_attention's; tests swap in "xla" on the CPU


def takes(q, k, v, key_mask_bs, *, normalizer: str, causal: bool, segments,
          length_scale: bool) -> bool:
    """Whether this call is plain softmax attention that cuDNN's flash kernel computes."""
    return (dispatch.backend() == "gpu" and normalizer == "softmax" and not length_scale
            and segments is None
            and cudnn_flash_takes(q, k, v, causal=causal, key_mask_bs=key_mask_bs))


def norm_attention(q, k, v, q_scale, k_scale, *, qk_norm: str | None, causal: bool,
                   sm_scale: float | None, eps: float):
    """softmax(norm(q) norm(k)ᵀ · sm_scale) v; the norms run in float32 and are rounded to the
    inputs' dtype for cuDNN. Raises what jax raises when cuDNN refuses the call."""
    qn = head_norm(q, q_scale, qk_norm, eps).astype(q.dtype)
    kn = head_norm(k, k_scale, qk_norm, eps).astype(k.dtype)
    return jax.nn.dot_product_attention(qn, kn, v, scale=sm_scale, is_causal=causal,
                                        implementation=IMPLEMENTATION)
