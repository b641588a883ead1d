"""Pallas kernels for causal chunked linear attention in the chunk-parallel form: every kernel
has one program per (batch, head, chunk), and no program walks the chunks.

The state of all earlier chunks (S = Σ φ(k)ᵀv, z = Σ φ(k), float32) comes from XLA: per-chunk
sums, then an exclusive cumsum over the chunk axis. Forward: per chunk,
out = ((QKᵀ ⊙ M) V + Q S) / ((QKᵀ ⊙ M) 1 + Q z) (or × scale), then the optional RMSNorm
epilogue. Backward: the dQ kernel recomputes a chunk's outputs, turns d out into G = ∂L/∂num
and H = ∂L/∂den, gives dQ and each chunk's own share of the later chunks' state gradients
(Qᵀ G and Σ q h); XLA sums those of the later chunks (a reverse exclusive cumsum) into dS, dz,
and the dK/dV kernel adds them to the chunk's own terms.
Zero padding at the end of time is harmless: it sits in the last chunk, which feeds no other
chunk's state, and its zero d out gives zero G and H. Tile products take the input dtype as
operands and accumulate in float32 (jaxlab.kernels.tiles), XLA's chunk sums too; the products
with one row or column are written as sums, since the GPU's dot needs ≥ 16. In 16 bits that is
a flash kernel's trade (tests/kernels/linear_arithmetic.py lists where they round): where the
output RMSNorm meets a near-zero output, its rstd scales that rounding in the gradients (dq 4%
of its largest entry off in a soak's case), which the all-float32 XLA path does not.
With `lane_dense` (TPU), the dQ kernel writes H as a [.., t, 128] slab, which XLA turns into
the [1, chunk] row per chunk that the dK/dV kernel reads, so that no block breaks Mosaic's
(8, 128) tiling and no kernel has to turn a column of H into a row. Per-chunk vectors (z, dz,
dgain) travel as [1, d] rows for the same reason.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlab.kernels.dispatch import compiler_params
from jaxlab.kernels.tiles import LANES, mm, mm_t, mm_tn, put_rows


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
    """(num, den) of one chunk given the state of all earlier chunks (zsum: [1, dk])."""
    # The numerator's product reads the weights in `dtype`, and the denominator sums the same
    # rounded weights, so that the values are weighed by weights that sum to 1: a row that sees
    # one key returns its value and, as in exact math, gets no gradient to q or k. Summed
    # unrounded, over a small denominator (relu features that barely overlap) their rounding
    # took dq 100× as far from float32 as the reference's (test_linear_attention_kernel.py).
    a = (mm_t(q, k, dtype) * _causal(s.chunk)).astype(dtype).astype(jnp.float32)
    num = mm(a, v, dtype) + mm(q, state, dtype)
    den = jnp.sum(a, axis=1) + jnp.sum(q * zsum, axis=1)
    return num, den


def _finish(s: Setup, num, den):
    return num / (den[:, None] + s.eps) if s.normalize else num * s.scale


def _epilogue(s: Setup, o, gain):
    rstd = jax.lax.rsqrt(jnp.mean(o * o, axis=1, keepdims=True) + s.norm_eps)
    return o * rstd * gain[None, :], rstd


def _f32(ref):
    return ref[...].astype(jnp.float32)


def _forward_kernel(q_ref, k_ref, v_ref, gain_ref, state_ref, z_ref, o_ref, *, s: Setup):
    q, k = _phi(_f32(q_ref), s.feature_map), _phi(_f32(k_ref), s.feature_map)
    o = _finish(s, *_chunk_outputs(s, q, k, _f32(v_ref), state_ref[...], z_ref[...],
                                   q_ref.dtype))
    if s.output_norm:
        o, _ = _epilogue(s, o, _f32(gain_ref))
    o_ref[...] = o.astype(o_ref.dtype)


def _dq_kernel(q_ref, k_ref, v_ref, gain_ref, do_ref, state_ref, z_ref,
               dq_ref, g_ref, h_ref, dgain_ref, dstate_ref, dz_ref, *, s: Setup):
    dtype = q_ref.dtype
    q_raw, v, d_out = _f32(q_ref), _f32(v_ref), _f32(do_ref)
    q, k = _phi(q_raw, s.feature_map), _phi(_f32(k_ref), s.feature_map)
    state, zsum = state_ref[...], z_ref[...]
    num, den = _chunk_outputs(s, q, k, v, state, zsum, dtype)
    o = _finish(s, num, den)
    dgain = jnp.zeros((1, v.shape[1]), jnp.float32)
    if s.output_norm:
        gain = _f32(gain_ref)
        _, rstd = _epilogue(s, o, gain)
        dgain = jnp.sum(d_out * o * rstd, axis=0, keepdims=True)
        dy_hat = d_out * gain[None, :]
        ohat = o * rstd
        d_out = rstd * (dy_hat - ohat * jnp.mean(dy_hat * ohat, axis=1, keepdims=True))
    if s.normalize:
        inv = 1.0 / (den + s.eps)
        # G rounded to `dtype` here, as every product reads it, and H taken of that G, so
        # that ∂L/∂a_tj = G_t·v_j + H_t = G_t·(v_j − out_t) cancels where exact math does.
        g = (d_out * inv[:, None]).astype(dtype).astype(jnp.float32)
        h = -jnp.sum(g * num, axis=1) * inv
    else:
        g, h = d_out * s.scale, jnp.zeros((s.chunk,), jnp.float32)
    p = (mm_t(g, v, dtype) + h[:, None]) * _causal(s.chunk)
    dq = mm(p, k, dtype) + mm_t(g, state, dtype) + h[:, None] * zsum
    dq_ref[...] = (dq * _dphi(q_raw, s.feature_map)).astype(dq_ref.dtype)
    g_ref[...] = g
    put_rows(h_ref, h[:, None], s.lane_dense)
    dgain_ref[...] = dgain
    # This chunk's share of the state gradients of all earlier chunks' keys and values.
    dstate_ref[...] = mm_tn(q, g, dtype)
    dz_ref[...] = jnp.sum(h[:, None] * q, axis=0, keepdims=True)


def _dkdv_kernel(q_ref, k_ref, v_ref, g_ref, h_row_ref, dstate_ref, dz_ref, dk_ref, dv_ref, *,
                 s: Setup):
    dtype = q_ref.dtype
    mask_t = _causal_t(s.chunk)
    q = _phi(_f32(q_ref), s.feature_map)
    k_raw, v, g, dstate = _f32(k_ref), _f32(v_ref), g_ref[...], dstate_ref[...]
    k = _phi(k_raw, s.feature_map)
    h_row = h_row_ref[...] if s.lane_dense else h_row_ref[...][None, :]   # [1, chunk]
    p_t = (mm_t(v, g, dtype) + h_row) * mask_t     # [j, t]: g_t·v_j + h_t, t ≥ j
    dk = mm(p_t, q, dtype) + mm_t(v, dstate, dtype) + dz_ref[...]
    dv = mm(mm_t(k, q, dtype) * mask_t, g, dtype) + mm(k, dstate, dtype)
    dk_ref[...] = (dk * _dphi(k_raw, s.feature_map)).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _rows(s: Setup, d):
    """A chunk of rows of a [B,H,T,d] array."""
    return pl.BlockSpec((None, None, s.chunk, d), lambda b, h, j: (b, h, j, 0))


def _per_chunk(*shape):
    """One chunk's [*shape] entry of a [B,H,N,*shape] array (vectors as [1, d] rows)."""
    return pl.BlockSpec((None, None, None) + shape, lambda b, h, j: (b, h, j) + (0,) * len(shape))


def _per_row(s: Setup):
    """One chunk of per-row values: a [chunk, 128] slab (lane-dense) or a [chunk] vector."""
    if s.lane_dense:
        return pl.BlockSpec((None, None, s.chunk, LANES), lambda b, h, j: (b, h, j, 0))
    return pl.BlockSpec((None, None, s.chunk), lambda b, h, j: (b, h, j))


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret, name):
    # Each program reads its chunk's state and writes only its own blocks: all axes parallel.
    params = None if interpret else compiler_params(
        num_warps=4, dimension_semantics=("parallel",) * 3)
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                          out_specs=out_specs, interpret=interpret, name=name,
                          compiler_params=params)


def _chunk_sums(x, y, dtype):
    """Per-chunk xᵀy: [B,H,N,C,dx], [B,H,N,C,dy] -> [B,H,N,dx,dy] float32, `dtype` operands."""
    precision = jax.lax.Precision.HIGHEST if jnp.dtype(dtype) == jnp.float32 else None
    return jnp.einsum("bhncx,bhncy->bhnxy", x.astype(dtype), y.astype(dtype),
                      precision=precision, preferred_element_type=jnp.float32)


def _exclusive_cumsum(x, reverse=False):
    """Over the chunk axis (2): the sum of the earlier (or, reversed, the later) chunks."""
    total = jax.lax.cumsum(x, axis=2, reverse=reverse)
    zero = jnp.zeros_like(x[:, :, :1])
    parts = (total[:, :, 1:], zero) if reverse else (zero, total[:, :, :-1])
    return jnp.concatenate(parts, axis=2)


def _earlier_states(k, v, s: Setup):
    """S and z of all chunks before each chunk: [B,H,N,dk,dv] and [B,H,N,1,dk], float32."""
    b, h, t, dk = k.shape
    n = t // s.chunk
    k_phi = _phi(k.astype(jnp.float32), s.feature_map).reshape(b, h, n, s.chunk, dk)
    state = _chunk_sums(k_phi, v.reshape(b, h, n, s.chunk, -1), k.dtype)
    zsum = k_phi.sum(axis=3, keepdims=True)
    return _exclusive_cumsum(state), _exclusive_cumsum(zsum)


@functools.partial(jax.jit, static_argnames=("s", "interpret"))
def forward(q, k, v, gain, *, s: Setup, interpret: bool):
    """q, k [B,H,T,Dk], v [B,H,T,Dv] with T a multiple of the chunk -> out [B,H,T,Dv]."""
    b, h, t, dk = q.shape
    dv = v.shape[3]
    state, zsum = _earlier_states(k, v, s)
    return _call(functools.partial(_forward_kernel, s=s), (b, h, t // s.chunk),
                 [_rows(s, dk), _rows(s, dk), _rows(s, dv),
                  pl.BlockSpec((dv,), lambda b, h, j: (0,)), _per_chunk(dk, dv),
                  _per_chunk(1, dk)],
                 _rows(s, dv), jax.ShapeDtypeStruct(v.shape, q.dtype), interpret,
                 "linear_attention_fwd")(q, k, v, gain, state, zsum)


@functools.partial(jax.jit, static_argnames=("s", "interpret"))
def backward(q, k, v, gain, dout, *, s: Setup, interpret: bool):
    """-> dq, dk, dv, dgain."""
    b, h, t, dk = q.shape
    dv = v.shape[3]
    n = t // s.chunk
    f32 = jnp.float32
    state, zsum = _earlier_states(k, v, s)
    per_row_shape = (b, h, t) + ((LANES,) if s.lane_dense else ())
    dq, g, hh, dgain, dstate, dz = _call(
        functools.partial(_dq_kernel, s=s), (b, h, n),
        [_rows(s, dk), _rows(s, dk), _rows(s, dv), pl.BlockSpec((dv,), lambda b, h, j: (0,)),
         _rows(s, dv), _per_chunk(dk, dv), _per_chunk(1, dk)],
        [_rows(s, dk), _rows(s, dv), _per_row(s), _per_chunk(1, dv), _per_chunk(dk, dv),
         _per_chunk(1, dk)],
        [jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct(v.shape, f32),
         jax.ShapeDtypeStruct(per_row_shape, f32), jax.ShapeDtypeStruct((b, h, n, 1, dv), f32),
         jax.ShapeDtypeStruct((b, h, n, dk, dv), f32), jax.ShapeDtypeStruct((b, h, n, 1, dk), f32)],
        interpret, "linear_attention_dq")(q, k, v, gain, dout, state, zsum)
    # The dK/dV kernel wants H as a row per chunk: on TPU, the slab's values along the lanes.
    if s.lane_dense:
        h_row, h_row_spec = hh[..., 0].reshape(b, h, n, 1, s.chunk), _per_chunk(1, s.chunk)
    else:
        h_row, h_row_spec = hh, _per_row(s)
    dk_out, dv_out = _call(
        functools.partial(_dkdv_kernel, s=s), (b, h, n),
        [_rows(s, dk), _rows(s, dk), _rows(s, dv), _rows(s, dv), h_row_spec,
         _per_chunk(dk, dv), _per_chunk(1, dk)],
        [_rows(s, dk), _rows(s, dv)],
        [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        interpret, "linear_attention_dkdv")(
            q, k, v, g, h_row, _exclusive_cumsum(dstate, reverse=True),
            _exclusive_cumsum(dz, reverse=True))
    return dq, dk_out, dv_out, dgain.sum((0, 1, 2, 3))
