"""The GPU path that `impl="auto"` prefers for plain softmax norm-attention: the q/k norms in
XLA, then cuDNN's flash attention (jax.nn.dot_product_attention).

Our Triton kernel ran at 0.61-0.74× of exactly this pair on an H100 (bf16, causal, d=64 at
T=1k-8k, d=128 at 1k; benchmarks/RESULTS.md), so `auto` takes it wherever cuDNN takes the
call; `impl="pallas"` still forces the kernel. cuDNN's causal mask starts at the first key
(ours is end-aligned) and it has no softplus, length scale, key mask or segment ids here, hence
the conditions in `takes`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlab.kernels import dispatch
from jaxlab.kernels.norm_attention.reference import head_norm

IMPLEMENTATION = "cudnn"  # jax.nn.dot_product_attention's; tests swap in "xla" on the CPU
DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))  # cuDNN's flash kernel is 16-bit
MAX_HEAD_DIM = 128  # the widest head measured against our kernel


def takes(q, k, v, key_mask_bs, *, normalizer: str, causal: bool, segments,
          length_scale: bool) -> bool:
    """Whether this call is plain softmax attention that cuDNN's flash kernel computes."""
    t, s_len, d = q.shape[1], k.shape[1], q.shape[-1]
    return (dispatch.backend() == "gpu" and normalizer == "softmax" and not length_scale
            and key_mask_bs is None and segments is None and (t == s_len or not causal)
            and q.dtype == k.dtype == v.dtype and q.dtype in DTYPES
            and d % 8 == 0 and d <= MAX_HEAD_DIM)


def norm_attention(q, k, v, q_scale, k_scale, *, qk_norm: str | None, causal: bool,
                   sm_scale: float | None, eps: float):
    """softmax(norm(q) norm(k)ᵀ · sm_scale) v; the norms run in float32 and are rounded to the
    inputs' dtype for cuDNN. Raises what jax raises when cuDNN refuses the call."""
    qn = head_norm(q, q_scale, qk_norm, eps).astype(q.dtype)
    kn = head_norm(k, k_scale, qk_norm, eps).astype(k.dtype)
    return jax.nn.dot_product_attention(qn, kn, v, scale=sm_scale, is_causal=causal,
                                        implementation=IMPLEMENTATION)
