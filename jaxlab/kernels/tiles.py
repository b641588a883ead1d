"""Matrix products of tiles inside the Pallas kernels, with the operand precision made explicit.

Operands are cast to `dtype` (the kernel's input dtype) and accumulate in float32: 16-bit inputs
run on the tensor cores like a flash-attention kernel's, and float32 inputs ask for full
float32 products, since a bare float32 dot lowers to TF32 on the GPU (about 1e-3 relative).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

_PRODUCTS = {"nn": (((1,), (0,)), ((), ())),   # a @ b
             "nt": (((1,), (1,)), ((), ())),   # a @ bᵀ
             "tn": (((0,), (0,)), ((), ()))}   # aᵀ @ b


def _product(a, b, dtype, form):
    precision = jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None
    return jax.lax.dot_general(a.astype(dtype), b.astype(dtype), _PRODUCTS[form],
                               precision=precision, preferred_element_type=jnp.float32)


def mm(a, b, dtype):
    """a @ b in float32 from `dtype` operands."""
    return _product(a, b, dtype, "nn")


def mm_t(a, b, dtype):
    """a @ bᵀ."""
    return _product(a, b, dtype, "nt")


def mm_tn(a, b, dtype):
    """aᵀ @ b."""
    return _product(a, b, dtype, "tn")
