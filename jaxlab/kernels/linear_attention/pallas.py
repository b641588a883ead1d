"""Pallas kernels for causal chunked linear attention: one program per (batch, head) walks the
chunks in order with the state (S = Σ kvᵀ, z = Σ k) in registers.

Forward: per chunk, out = ((QKᵀ ⊙ M) V + Q S) / ((QKᵀ ⊙ M) 1 + Q z) (or × scale), then the
optional RMSNorm epilogue. Backward: a forward-time pass recomputes the outputs, turns d out into
G = ∂L/∂num and H = ∂L/∂den and gives dQ; a reverse-time pass with dS = Σ qᵀg, dz = Σ q h gives
dK and dV. Zero padding at the end of time is harmless: causality hides it from real queries.
Tile products take the input dtype as operands and accumulate in float32 (jaxlab.kernels.tiles);
the products with one row or column are written as sums, since the GPU's dot needs ≥ 16.
With `lane_dense` (TPU), H travels as a [.., t, 128] slab and, for the reverse pass, also as one
[1, chunk] row per chunk, so that no block breaks Mosaic's (8, 128) tiling and no kernel has to
turn a column of H into a row.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlab.kernels.dispatch import compiler_params
from jaxlab.kernels.tiles import LANES, get_rows, mm, mm_t, mm_tn, put_rows


@dataclasses.dataclass(frozen=True)
class Setup:
    chunk: int
    feature_map: str
    normalize: bool
    scale: float
    eps: float
    output_norm: bool
    norm_eps: float
    lane_dense: bool = False


def _phi(x, name):
    if name == "elu1":
        return jnp.where(x > 0, x + 1.0, jnp.exp(jnp.minimum(x, 0.0)))
    if name == "relu":
        return jnp.maximum(x, 0.0)
    return x


def _dphi(x, name):
    if name == "elu1":
        return jnp.where(x > 0, 1.0, jnp.exp(jnp.minimum(x, 0.0)))
    if name == "relu":
        return (x > 0).astype(x.dtype)
    return jnp.ones_like(x)


def _causal(c):
    return (jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
            >= jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)).astype(jnp.float32)


def _causal_t(c):
    """_causal(c).T, built directly: an in-kernel transpose is one more relayout for Mosaic."""
    return (jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
            <= jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)).astype(jnp.float32)


def _chunk_outputs(s: Setup, q, k, v, state, zsum, dtype):
    """(num, den) of one chunk given the state of all earlier chunks."""
    a = mm_t(q, k, dtype) * _causal(s.chunk)
    num = mm(a, v, dtype) + mm(q, state, dtype)
    den = jnp.sum(a, axis=1) + jnp.sum(q * zsum[None, :], axis=1)
    return num, den


def _finish(s: Setup, num, den):
    return num / (den[:, None] + s.eps) if s.normalize else num * s.scale


def _epilogue(s: Setup, o, gain):
    rstd = jax.lax.rsqrt(jnp.mean(o * o, axis=1, keepdims=True) + s.norm_eps)
    return o * rstd * gain[None, :], rstd


def _load(ref, j, s: Setup):
    return ref[pl.ds(j * s.chunk, s.chunk), :].astype(jnp.float32)


def _forward_kernel(q_ref, k_ref, v_ref, gain_ref, o_ref, *, s: Setup, num_chunks: int):
    dk, dv = q_ref.shape[1], v_ref.shape[1]
    gain = gain_ref[...].astype(jnp.float32)

    def body(j, carry):
        state, zsum = carry
        q, k = _phi(_load(q_ref, j, s), s.feature_map), _phi(_load(k_ref, j, s), s.feature_map)
        v = _load(v_ref, j, s)
        o = _finish(s, *_chunk_outputs(s, q, k, v, state, zsum, q_ref.dtype))
        if s.output_norm:
            o, _ = _epilogue(s, o, gain)
        o_ref[pl.ds(j * s.chunk, s.chunk), :] = o.astype(o_ref.dtype)
        return state + mm_tn(k, v, q_ref.dtype), zsum + jnp.sum(k, axis=0)

    jax.lax.fori_loop(0, num_chunks, body,
                      (jnp.zeros((dk, dv), jnp.float32), jnp.zeros((dk,), jnp.float32)))


def _dq_kernel(q_ref, k_ref, v_ref, gain_ref, do_ref, dq_ref, g_ref, h_ref, dgain_ref, *,
               s: Setup, num_chunks: int):
    dk, dv = q_ref.shape[1], v_ref.shape[1]
    dtype = q_ref.dtype
    gain = gain_ref[...].astype(jnp.float32)
    mask = _causal(s.chunk)

    def body(j, carry):
        state, zsum, dgain = carry
        rows = pl.ds(j * s.chunk, s.chunk)
        q_raw = _load(q_ref, j, s)
        q, k = _phi(q_raw, s.feature_map), _phi(_load(k_ref, j, s), s.feature_map)
        v, d_out = _load(v_ref, j, s), _load(do_ref, j, s)
        num, den = _chunk_outputs(s, q, k, v, state, zsum, dtype)
        o = _finish(s, num, den)
        if s.output_norm:
            _, rstd = _epilogue(s, o, gain)
            dgain = dgain + jnp.sum(d_out * o * rstd, axis=0)
            dy_hat = d_out * gain[None, :]
            ohat = o * rstd
            d_out = rstd * (dy_hat - ohat * jnp.mean(dy_hat * ohat, axis=1, keepdims=True))
        if s.normalize:
            inv = 1.0 / (den + s.eps)
            g = d_out * inv[:, None]
            h = -jnp.sum(d_out * num, axis=1) * inv * inv
        else:
            g, h = d_out * s.scale, jnp.zeros((s.chunk,), jnp.float32)
        p = (mm_t(g, v, dtype) + h[:, None]) * mask
        dq = mm(p, k, dtype) + mm_t(g, state, dtype) + h[:, None] * zsum[None, :]
        dq_ref[rows, :] = (dq * _dphi(q_raw, s.feature_map)).astype(dq_ref.dtype)
        g_ref[rows, :] = g
        put_rows(h_ref, h[:, None], s.lane_dense, rows)
        return state + mm_tn(k, v, dtype), zsum + jnp.sum(k, axis=0), dgain

    _, _, dgain = jax.lax.fori_loop(
        0, num_chunks, body, (jnp.zeros((dk, dv), jnp.float32), jnp.zeros((dk,), jnp.float32),
                              jnp.zeros((dv,), jnp.float32)))
    dgain_ref[...] = dgain[None, :]


def _dkdv_kernel(q_ref, k_ref, v_ref, g_ref, h_ref, h_row_ref, dk_ref, dv_ref, *, s: Setup,
                 num_chunks: int):
    dk_dim, dv_dim = q_ref.shape[1], v_ref.shape[1]
    dtype = q_ref.dtype
    mask_t = _causal_t(s.chunk)

    def body(step, carry):
        dstate, dz = carry
        j = num_chunks - 1 - step
        rows = pl.ds(j * s.chunk, s.chunk)
        q = _phi(_load(q_ref, j, s), s.feature_map)
        k_raw = _load(k_ref, j, s)
        k, v = _phi(k_raw, s.feature_map), _load(v_ref, j, s)
        g, h = g_ref[rows, :], get_rows(h_ref, s.lane_dense, rows)      # h: [chunk, 1]
        h_row = h_row_ref[j] if s.lane_dense else h_row_ref[rows][None, :]  # [1, chunk]
        p_t = (mm_t(v, g, dtype) + h_row) * mask_t     # [j, t]: g_t·v_j + h_t, t ≥ j
        dk = mm(p_t, q, dtype) + mm_t(v, dstate, dtype) + dz[None, :]
        dv = mm(mm_t(k, q, dtype) * mask_t, g, dtype) + mm(k, dstate, dtype)
        dk_ref[rows, :] = (dk * _dphi(k_raw, s.feature_map)).astype(dk_ref.dtype)
        dv_ref[rows, :] = dv.astype(dv_ref.dtype)
        return dstate + mm_tn(q, g, dtype), dz + jnp.sum(h * q, axis=0)

    jax.lax.fori_loop(0, num_chunks, body, (jnp.zeros((dk_dim, dv_dim), jnp.float32),
                                            jnp.zeros((dk_dim,), jnp.float32)))


def _seq(t, d):
    return pl.BlockSpec((None, None, t, d), lambda b, h: (b, h, 0, 0))


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret, name):
    # One program per (batch, head), each with its own outputs: both grid axes are parallel.
    params = None if interpret else compiler_params(
        num_warps=4, dimension_semantics=("parallel", "parallel"))
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                          out_specs=out_specs, interpret=interpret, name=name,
                          compiler_params=params)


@functools.partial(jax.jit, static_argnames=("s", "interpret"))
def forward(q, k, v, gain, *, s: Setup, interpret: bool):
    """q, k [B,H,T,Dk], v [B,H,T,Dv] with T a multiple of the chunk -> out [B,H,T,Dv]."""
    b, h, t, dk = q.shape
    dv = v.shape[3]
    return _call(functools.partial(_forward_kernel, s=s, num_chunks=t // s.chunk), (b, h),
                 [_seq(t, dk), _seq(t, dk), _seq(t, dv), pl.BlockSpec((dv,), lambda b, h: (0,))],
                 _seq(t, dv), jax.ShapeDtypeStruct(v.shape, q.dtype), interpret,
                 "linear_attention_fwd")(q, k, v, gain)


@functools.partial(jax.jit, static_argnames=("s", "interpret"))
def backward(q, k, v, gain, dout, *, s: Setup, interpret: bool):
    """-> dq, dk, dv, dgain."""
    b, h, t, dk = q.shape
    dv = v.shape[3]
    n = t // s.chunk
    vector = pl.BlockSpec((dv,), lambda b, h: (0,))
    if s.lane_dense:
        rows = pl.BlockSpec((None, None, t, LANES), lambda b, h: (b, h, 0, 0))
        row_chunks = pl.BlockSpec((None, None, n, 1, s.chunk), lambda b, h: (b, h, 0, 0, 0))
    else:
        rows = row_chunks = pl.BlockSpec((None, None, t), lambda b, h: (b, h, 0))
    dq, g, hh, dgain = _call(
        functools.partial(_dq_kernel, s=s, num_chunks=n), (b, h),
        [_seq(t, dk), _seq(t, dk), _seq(t, dv), vector, _seq(t, dv)],
        [_seq(t, dk), _seq(t, dv), rows, pl.BlockSpec((None, None, 1, dv), lambda b, h: (b, h, 0, 0))],
        [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(v.shape, jnp.float32),
         jax.ShapeDtypeStruct((b, h, t) + ((LANES,) if s.lane_dense else ()), jnp.float32),
         jax.ShapeDtypeStruct((b, h, 1, dv), jnp.float32)],
        interpret, "linear_attention_dq")(q, k, v, gain, dout)
    # H once more with each chunk's values along the lanes (on TPU; else the same vector).
    h_row = hh[..., 0].reshape(b, h, n, 1, s.chunk) if s.lane_dense else hh
    dk_out, dv_out = _call(
        functools.partial(_dkdv_kernel, s=s, num_chunks=n), (b, h),
        [_seq(t, dk), _seq(t, dk), _seq(t, dv), _seq(t, dv), rows, row_chunks],
        [_seq(t, dk), _seq(t, dv)],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret, "linear_attention_dkdv")(q, k, v, g, hh, h_row)
    return dq, dk_out, dv_out, dgain.sum((0, 1, 2))
