"""Matrix products of tiles inside the Pallas kernels, with the operand precision made explicit.

Operands are cast to `dtype` (the kernel's input dtype) and accumulate in float32: 16-bit inputs
run on the tensor cores like a flash-attention kernel's, and float32 inputs ask for full
float32 products, since a bare float32 dot lowers to TF32 on the GPU (about 1e-3 relative).
Also here: the two layouts of per-row values (row statistics and the like) in kernel refs.
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


# Per-row values (statistics, segment ids, scales) in two layouts. Plain: a [rows] vector.
# Lane-dense (TPU): a [rows, LANES] slab of copies, since Mosaic tiles a block's last two dims
# by (8, 128) and a 1-D block of rows must be 128 rows or more; the values are the same.
LANES = 128


def put_rows(ref, column, lane_dense: bool, rows=slice(None)):
    """Store a [rows, 1] float32 column at `rows` of a per-row ref, in either layout."""
    if lane_dense:
        ref[rows, :] = jnp.broadcast_to(column, (column.shape[0], LANES))
    else:
        ref[rows] = column[:, 0]


def get_rows(ref, lane_dense: bool, rows=slice(None)):
    """The [rows, 1] column that `put_rows` stored (or that a wrapper laid out) at `rows`."""
    if lane_dense:
        return ref[rows, :][:, :1]
    return ref[rows][:, None]


def lane_slab(x):
    """[..., rows] -> [..., rows, LANES]: the lane-dense layout of per-row values, built by XLA."""
    return jnp.broadcast_to(x[..., None], x.shape + (LANES,))
