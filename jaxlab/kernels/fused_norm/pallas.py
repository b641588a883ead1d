"""Pallas kernels for the fused norm: one pass forward, one pass backward, over row blocks.

Each program owns `block_rows` full rows, so the row statistics need no cross-program
reduction; the scale/bias gradients come out as one partial sum per block, added up by XLA.
Both passes may walk their block a few rows at a time (`step_rows`), so that wide rows do not
force small blocks and, in the backward, many partial sums.
The statistics are plain [n] vectors, or with `lane_dense` (TPU) [n, 128] slabs
(jaxlab.kernels.tiles.put_rows).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlab.kernels.dispatch import compiler_params
from jaxlab.kernels.tiles import LANES, get_rows, put_rows


def _normalize(h, kind: str, eps: float):
    if kind == "rms":
        mean = jnp.zeros((h.shape[0], 1), jnp.float32)
    else:
        mean = jnp.mean(h, axis=1, keepdims=True)
    centered = h - mean
    rstd = jax.lax.rsqrt(jnp.mean(centered * centered, axis=1, keepdims=True) + eps)
    return centered * rstd, mean, rstd


def _walk(block_rows: int, step_rows: int, step, carry):
    """carry = step(rows, carry) over the block's rows, `step_rows` at a time: a wide row's
    float32 temporaries then fit in registers while the program still owns many rows (in the
    backward: few partial sums to write)."""
    if step_rows == block_rows:
        return step(slice(None), carry)

    def body(i, carry):
        return step(pl.ds(pl.multiple_of(i * step_rows, step_rows), step_rows), carry)
    return jax.lax.fori_loop(0, block_rows // step_rows, body, carry)


def _forward_kernel(*refs, kind: str, eps: float, has_residual: bool, has_bias: bool,
                    lane_dense: bool, step_rows: int):
    refs = list(refs)
    x_ref = refs.pop(0)
    r_ref = refs.pop(0) if has_residual else None
    w_ref = refs.pop(0)
    b_ref = refs.pop(0) if has_bias else None
    y_ref = refs.pop(0)
    h_ref = refs.pop(0) if has_residual else None
    mean_ref, rstd_ref = refs

    def step(rows, carry):
        h = x_ref[rows, :]
        if has_residual:
            h = h + r_ref[rows, :]
            h_ref[rows, :] = h
        xhat, mean, rstd = _normalize(h.astype(jnp.float32), kind, eps)
        y = xhat * w_ref[...].astype(jnp.float32)[None, :]
        if has_bias:
            y = y + b_ref[...].astype(jnp.float32)[None, :]
        y_ref[rows, :] = y.astype(y_ref.dtype)
        put_rows(mean_ref, mean, lane_dense, rows)
        put_rows(rstd_ref, rstd, lane_dense, rows)
        return carry

    _walk(x_ref.shape[0], step_rows, step, ())


def _backward_kernel(*refs, kind: str, lane_dense: bool, has_dh: bool, step_rows: int):
    refs = list(refs)
    h_ref, dy_ref = refs.pop(0), refs.pop(0)
    dh_ref = refs.pop(0) if has_dh else None
    w_ref, mean_ref, rstd_ref, dx_ref, dw_ref, db_ref = refs
    w = w_ref[...].astype(jnp.float32)[None, :]

    def step(rows, carry):
        """dx of `rows` of the block; adds their share of dscale, dbias to the carry."""
        h = h_ref[rows, :].astype(jnp.float32)
        rstd = get_rows(rstd_ref, lane_dense, rows)
        xhat = (h - get_rows(mean_ref, lane_dense, rows)) * rstd
        dy = dy_ref[rows, :].astype(jnp.float32)
        dxhat = dy * w
        inner = dxhat - xhat * jnp.mean(dxhat * xhat, axis=1, keepdims=True)
        if kind == "layer":
            inner = inner - jnp.mean(dxhat, axis=1, keepdims=True)
        dx = rstd * inner
        if has_dh:
            dx = dx + dh_ref[rows, :].astype(jnp.float32)
        dx_ref[rows, :] = dx.astype(dx_ref.dtype)
        dw, db = carry
        return dw + jnp.sum(dy * xhat, axis=0), db + jnp.sum(dy, axis=0)

    block_rows, d = h_ref.shape
    zeros = jnp.zeros((d,), jnp.float32)
    dw, db = _walk(block_rows, step_rows, step, (zeros, zeros))
    dw_ref[...] = dw[None, :]
    db_ref[...] = db[None, :]


def _row_spec(block_rows: int, d: int):
    return pl.BlockSpec((block_rows, d), lambda i: (i, 0))


def _vector_spec(d: int):
    return pl.BlockSpec((d,), lambda i: (0,))


def _stat_spec(block_rows: int, lane_dense: bool):
    if lane_dense:
        return pl.BlockSpec((block_rows, LANES), lambda i: (i, 0))
    return pl.BlockSpec((block_rows,), lambda i: (i,))


def _stat_shape(n: int, lane_dense: bool):
    return jax.ShapeDtypeStruct((n, LANES) if lane_dense else (n,), jnp.float32)


def _partial_spec(d: int):
    # One [1, d] partial sum per block: a block whose last two dims are the array's own
    # (1, d) is valid for Mosaic's (8, 128) tiling whatever the number of blocks.
    return pl.BlockSpec((None, 1, d), lambda i: (i, 0, 0))


def _params(interpret: bool, num_warps: int):
    # Each program owns its rows and writes its own partial sums: the row axis is parallel.
    return None if interpret else compiler_params(num_warps=num_warps,
                                                  dimension_semantics=("parallel",))


@functools.partial(jax.jit, static_argnames=("kind", "eps", "block_rows", "num_warps",
                                             "interpret", "lane_dense", "step_rows"))
def forward(x, scale, bias, residual, *, kind: str, eps: float, block_rows: int, interpret: bool,
            lane_dense: bool = False, num_warps: int = 4, step_rows: int | None = None):
    """x, residual [n, d] with n a multiple of block_rows -> (y, h or None, mean, rstd). Each
    program walks its block `step_rows` rows at a time (default: all at once)."""
    n, d = x.shape
    has_residual, has_bias = residual is not None, bias is not None
    inputs = [x] + ([residual] if has_residual else []) + [scale] + ([bias] if has_bias else [])
    in_specs = ([_row_spec(block_rows, d)] * (1 + has_residual) + [_vector_spec(d)]
                + ([_vector_spec(d)] if has_bias else []))
    out_shape = ([jax.ShapeDtypeStruct((n, d), x.dtype)]
                 + ([jax.ShapeDtypeStruct((n, d), x.dtype)] if has_residual else [])
                 + [_stat_shape(n, lane_dense)] * 2)
    out_specs = ([_row_spec(block_rows, d)] * (1 + has_residual)
                 + [_stat_spec(block_rows, lane_dense)] * 2)
    kernel = functools.partial(_forward_kernel, kind=kind, eps=eps, has_residual=has_residual,
                               has_bias=has_bias, lane_dense=lane_dense,
                               step_rows=step_rows or block_rows)
    outs = pl.pallas_call(kernel, out_shape=out_shape, grid=(n // block_rows,),
                          in_specs=in_specs, out_specs=out_specs, interpret=interpret,
                          compiler_params=_params(interpret, num_warps),
                          name=f"fused_{kind}_norm_fwd")(*inputs)
    y, rest = outs[0], list(outs[1:])
    h = rest.pop(0) if has_residual else None
    return y, h, rest[0], rest[1]


@functools.partial(jax.jit, static_argnames=("kind", "block_rows", "num_warps", "interpret",
                                             "lane_dense", "step_rows"))
def backward(h, dy, dh, scale, mean, rstd, *, kind: str, block_rows: int, interpret: bool,
             lane_dense: bool = False, num_warps: int = 4, step_rows: int | None = None):
    """-> (dx, dscale, dbias); dx is also the residual's gradient, since h = x + residual.
    dh (the cotangent of h) may be None. Each program walks its block `step_rows` rows at a
    time (default: all at once)."""
    n, d = h.shape
    blocks = n // block_rows
    has_dh = dh is not None
    kernel = functools.partial(_backward_kernel, kind=kind, lane_dense=lane_dense, has_dh=has_dh,
                               step_rows=step_rows or block_rows)
    dx, dw, db = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((n, d), h.dtype),
                   jax.ShapeDtypeStruct((blocks, 1, d), jnp.float32),
                   jax.ShapeDtypeStruct((blocks, 1, d), jnp.float32)],
        grid=(blocks,),
        in_specs=([_row_spec(block_rows, d)] * (2 + has_dh) + [_vector_spec(d)]
                  + [_stat_spec(block_rows, lane_dense)] * 2),
        out_specs=[_row_spec(block_rows, d), _partial_spec(d), _partial_spec(d)],
        interpret=interpret, compiler_params=_params(interpret, num_warps),
        name=f"fused_{kind}_norm_bwd")(h, dy, *([dh] if has_dh else []), scale, mean, rstd)
    return dx, dw.sum((0, 1)), db.sum((0, 1))
