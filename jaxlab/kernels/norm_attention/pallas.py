"""Flash-style Pallas kernels for fused norm-attention (forward, dQ, dK/dV).

Layout inside: [batch, heads, time, head_dim], time padded to the blocks. One program per
(batch, head, query block) walks the key blocks (forward, dQ); one per (batch, query head,
key block) walks the query blocks (dK/dV), so no program writes where another does. The q and
k norms are recomputed per tile: the only residual is one float32 statistic per query row
(log-sum-exp for softmax, the ℓ1 sum for softplus). Key validity (padding, ragged tail) comes
in as a 0/1 vector per key and packed sequences as segment ids per query and key; causality is
end-aligned (query i sees keys ≤ i + s_len − t_len). Tile products take the input dtype as
operands and accumulate in float32 (jaxlab.kernels.tiles).

Per-query values (segment ids, logit factors, the row statistic and δ) are [.., t] vectors, or
with `lane_dense` (TPU) [.., t, 128] slabs; per-key values are [b, s] vectors, or on TPU
[b, key blocks, 1, block_k], so that every block's last two dims suit Mosaic's (8, 128) tiling
and each key block is read by a leading index. Inside, queries' values are [block_q, 1]
columns and keys' are [1, block_k] rows in either layout.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxlab.kernels.dispatch import compiler_params
from jaxlab.kernels.tiles import LANES, get_rows, mm, mm_t, mm_tn, put_rows

NEG = -1e30  # a finite "minus infinity": keeps max/exp free of inf − inf


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Static facts every kernel needs."""
    block_q: int
    block_k: int
    q_len: int          # unpadded
    k_len: int          # unpadded
    group: int          # query heads per key/value head
    causal: bool
    normalizer: str
    qk_norm: str | None
    sm_scale: float
    eps: float
    segmented: bool = False
    length_scaled: bool = False    # logits × a per-query factor (LSSA's log d · log n) as well
    num_warps: int | None = None   # Triton launch settings; None: 4 up to head dim 64, else 8
    num_stages: int = 2
    lane_dense: bool = False       # TPU layouts of per-query and per-key values (see above)


def _key_row(g: Geometry, ref, j=None):
    """[1, block_k] values of key block j (None: the ref holds that block only)."""
    if g.lane_dense:
        return ref[...] if j is None else ref[j]
    return (ref[...] if j is None else ref[pl.ds(j * g.block_k, g.block_k)])[None, :]


def _norm_rows(x, scale, kind, eps):
    """(normalized·scale, normalized, rstd) over the last axis, float32."""
    if kind is None:
        return x, x, None
    if kind == "layer":
        x = x - jnp.mean(x, axis=1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(x * x, axis=1, keepdims=True) + eps)
    xhat = x * rstd
    return xhat * scale[None, :], xhat, rstd


def _norm_rows_vjp(dout, xhat, rstd, scale, kind):
    """(dx, dscale) for out = xhat·scale given d out."""
    if kind is None:
        return dout, None
    dxhat = dout * scale[None, :]
    inner = dxhat - xhat * jnp.mean(dxhat * xhat, axis=1, keepdims=True)
    if kind == "layer":
        inner = inner - jnp.mean(dxhat, axis=1, keepdims=True)
    return rstd * inner, jnp.sum(dout * xhat, axis=0)


def _visible(g: Geometry, q_block, k_block, kmask, q_seg, k_seg):
    """[block_q, block_k] booleans: which keys of the tile each query may see. kmask is a
    [1, block_k] row; q_seg and k_seg load the tile's segment ids as a column and a row, and
    are called only when ids were given."""
    q_pos = q_block * g.block_q + jax.lax.broadcasted_iota(jnp.int32, (g.block_q, g.block_k), 0)
    k_pos = k_block * g.block_k + jax.lax.broadcasted_iota(jnp.int32, (g.block_q, g.block_k), 1)
    visible = jnp.broadcast_to(kmask > 0, (g.block_q, g.block_k))
    if g.causal:
        visible = visible & (q_pos + (g.k_len - g.q_len) >= k_pos)
    if g.segmented:
        visible = visible & (q_seg() == k_seg())
    return visible


def _k_blocks_for(g: Geometry, q_block, num_k_blocks):
    """Key blocks a query block can see: all, or up to its causal edge."""
    if not g.causal:
        return num_k_blocks
    last_key = (q_block + 1) * g.block_q - 1 + (g.k_len - g.q_len)
    return jnp.clip(last_key // g.block_k + 1, 0, num_k_blocks)


def _q_block_start(g: Geometry, k_block):
    """First query block that can see key block `k_block` under causality."""
    if not g.causal:
        return 0
    first_query = k_block * g.block_k - (g.k_len - g.q_len)
    return jnp.maximum(first_query, 0) // g.block_q


def _logit_scale(g: Geometry, row_scale):
    """What multiplies q·k: sm_scale, times each query's factor (a column) when length-scaled."""
    return row_scale() * g.sm_scale if g.length_scaled else g.sm_scale


def _forward_kernel(q_ref, k_ref, v_ref, kmask_ref, qseg_ref, kseg_ref, rscale_ref, qs_ref,
                    ks_ref, o_ref, stat_ref, *, g: Geometry, num_k_blocks: int):
    q_block = pl.program_id(2)
    dtype = q_ref.dtype
    scale = _logit_scale(g, lambda: get_rows(rscale_ref, g.lane_dense))
    q, _, _ = _norm_rows(q_ref[...].astype(jnp.float32), qs_ref[...].astype(jnp.float32),
                         g.qk_norm, g.eps)
    ks = ks_ref[...].astype(jnp.float32)
    d = q.shape[1]

    def body(j, carry):
        m, l, acc = carry
        rows = pl.ds(j * g.block_k, g.block_k)
        k, _, _ = _norm_rows(k_ref[rows, :].astype(jnp.float32), ks, g.qk_norm, g.eps)
        visible = _visible(g, q_block, j, _key_row(g, kmask_ref, j),
                           lambda: get_rows(qseg_ref, g.lane_dense),
                           lambda: _key_row(g, kseg_ref, j))
        s = mm_t(q, k, dtype) * scale
        if g.normalizer == "softmax":
            s = jnp.where(visible, s, NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
            w = jnp.where(visible, jnp.exp(s - m_new), 0.0)
            alpha = jnp.exp(m - m_new)
            return (m_new, alpha * l + jnp.sum(w, axis=1, keepdims=True),
                    alpha * acc + mm(w, v_ref[rows, :], dtype))
        w = jnp.where(visible, jax.nn.softplus(s), 0.0)
        return m, l + jnp.sum(w, axis=1, keepdims=True), acc + mm(w, v_ref[rows, :], dtype)

    # m and l are [block_q, 1] columns, which both the Triton and the Mosaic layouts take.
    init = (jnp.full((g.block_q, 1), NEG, jnp.float32), jnp.zeros((g.block_q, 1), jnp.float32),
            jnp.zeros((g.block_q, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(0, _k_blocks_for(g, q_block, num_k_blocks), body, init)
    seen = l > 0
    o_ref[...] = jnp.where(seen, acc / jnp.where(seen, l, 1.0), 0.0).astype(o_ref.dtype)
    if g.normalizer == "softmax":
        stat = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
    else:
        stat = l
    put_rows(stat_ref, stat, g.lane_dense)


def _score_grads(g: Geometry, s, visible, stat, dp, delta):
    """(p, dS) for one tile: p the attention weights, dS = ∂loss/∂s; stat and delta are
    [block_q, 1] columns."""
    if g.normalizer == "softmax":
        p = jnp.where(visible, jnp.exp(s - stat), 0.0)
        return p, p * (dp - delta)
    inv_l = jnp.where(stat > 0, 1.0 / jnp.where(stat > 0, stat, 1.0), 0.0)
    p = jnp.where(visible, jax.nn.softplus(s), 0.0) * inv_l
    return p, jnp.where(visible, jax.nn.sigmoid(s), 0.0) * inv_l * (dp - delta)


def _dq_kernel(q_ref, k_ref, v_ref, kmask_ref, qseg_ref, kseg_ref, rscale_ref, qs_ref, ks_ref,
               do_ref, stat_ref, delta_ref, dq_ref, dqs_ref, *, g: Geometry, num_k_blocks: int):
    q_block = pl.program_id(2)
    dtype = q_ref.dtype
    scale = _logit_scale(g, lambda: get_rows(rscale_ref, g.lane_dense))
    qs = qs_ref[...].astype(jnp.float32)
    q, qhat, q_rstd = _norm_rows(q_ref[...].astype(jnp.float32), qs, g.qk_norm, g.eps)
    ks = ks_ref[...].astype(jnp.float32)
    do = do_ref[...]
    stat, delta = get_rows(stat_ref, g.lane_dense), get_rows(delta_ref, g.lane_dense)

    def body(j, dq):
        rows = pl.ds(j * g.block_k, g.block_k)
        k, _, _ = _norm_rows(k_ref[rows, :].astype(jnp.float32), ks, g.qk_norm, g.eps)
        visible = _visible(g, q_block, j, _key_row(g, kmask_ref, j),
                           lambda: get_rows(qseg_ref, g.lane_dense),
                           lambda: _key_row(g, kseg_ref, j))
        s = mm_t(q, k, dtype) * scale
        _, ds = _score_grads(g, s, visible, stat, mm_t(do, v_ref[rows, :], dtype), delta)
        return dq + mm(ds * scale, k, dtype)

    dq = jax.lax.fori_loop(0, _k_blocks_for(g, q_block, num_k_blocks), body, jnp.zeros_like(q))
    dq, dqs = _norm_rows_vjp(dq, qhat, q_rstd, qs, g.qk_norm)
    dq_ref[...] = dq.astype(dq_ref.dtype)
    dqs_ref[...] = (jnp.zeros_like(qs) if dqs is None else dqs)[None, :]


def _dkdv_kernel(q_ref, k_ref, v_ref, kmask_ref, qseg_ref, kseg_ref, rscale_ref, qs_ref, ks_ref,
                 do_ref, stat_ref, delta_ref, dk_ref, dv_ref, dks_ref, *, g: Geometry,
                 num_q_blocks: int):
    k_block = pl.program_id(2)
    dtype = q_ref.dtype
    ks = ks_ref[...].astype(jnp.float32)
    k, khat, k_rstd = _norm_rows(k_ref[...].astype(jnp.float32), ks, g.qk_norm, g.eps)
    v = v_ref[...]
    qs = qs_ref[...].astype(jnp.float32)
    kmask = _key_row(g, kmask_ref)
    column = lambda ref, rows: get_rows(ref, g.lane_dense, rows)

    def body(i, carry):
        dk, dv = carry
        rows = pl.ds(i * g.block_q, g.block_q)
        q, _, _ = _norm_rows(q_ref[rows, :].astype(jnp.float32), qs, g.qk_norm, g.eps)
        do = do_ref[rows, :]
        visible = _visible(g, i, k_block, kmask, lambda: column(qseg_ref, rows),
                           lambda: _key_row(g, kseg_ref))
        scale = _logit_scale(g, lambda: column(rscale_ref, rows))
        s = mm_t(q, k, dtype) * scale
        p, ds = _score_grads(g, s, visible, column(stat_ref, rows), mm_t(do, v, dtype),
                             column(delta_ref, rows))
        return dk + mm_tn(ds * scale, q, dtype), dv + mm_tn(p, do, dtype)

    dk, dv = jax.lax.fori_loop(_q_block_start(g, k_block), num_q_blocks, body,
                               (jnp.zeros_like(k), jnp.zeros(v.shape, jnp.float32)))
    dk, dks = _norm_rows_vjp(dk, khat, k_rstd, ks, g.qk_norm)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    dks_ref[...] = (jnp.zeros_like(ks) if dks is None else dks)[None, :]


def _specs(g: Geometry, b_h_t_d, kv_len):
    """BlockSpecs shared by the kernels, for a grid of (batch, query head, block)."""
    _, _, tq, d = b_h_t_d
    nk = kv_len // g.block_k
    whole_q = pl.BlockSpec((None, None, tq, d), lambda b, h, i: (b, h, 0, 0))
    q_tile = pl.BlockSpec((None, None, g.block_q, d), lambda b, h, i: (b, h, i, 0))
    whole_kv = pl.BlockSpec((None, None, kv_len, d), lambda b, h, i: (b, h // g.group, 0, 0))
    kv_tile = pl.BlockSpec((None, None, g.block_k, d), lambda b, h, i: (b, h // g.group, i, 0))
    vector = pl.BlockSpec((d,), lambda b, h, i: (0,))
    # One [1, d] partial sum per program: its last two dims are the array's own.
    partial = pl.BlockSpec((None, None, None, 1, d), lambda b, h, i: (b, h, i, 0, 0))
    if g.lane_dense:
        kmask_whole = pl.BlockSpec((None, nk, 1, g.block_k), lambda b, h, i: (b, 0, 0, 0))
        kmask_tile = pl.BlockSpec((None, None, 1, g.block_k), lambda b, h, i: (b, i, 0, 0))
        qseg_whole = pl.BlockSpec((None, tq, LANES), lambda b, h, i: (b, 0, 0))
        qseg_tile = pl.BlockSpec((None, g.block_q, LANES), lambda b, h, i: (b, i, 0))
        row_tile = pl.BlockSpec((None, None, g.block_q, LANES), lambda b, h, i: (b, h, i, 0))
        row_whole = pl.BlockSpec((None, None, tq, LANES), lambda b, h, i: (b, h, 0, 0))
    else:
        kmask_whole = pl.BlockSpec((None, kv_len), lambda b, h, i: (b, 0))
        kmask_tile = pl.BlockSpec((None, g.block_k), lambda b, h, i: (b, i))
        qseg_whole = pl.BlockSpec((None, tq), lambda b, h, i: (b, 0))
        qseg_tile = pl.BlockSpec((None, g.block_q), lambda b, h, i: (b, i))
        row_tile = pl.BlockSpec((None, None, g.block_q), lambda b, h, i: (b, h, i))
        row_whole = pl.BlockSpec((None, None, tq), lambda b, h, i: (b, h, 0))
    return locals()


def _row_shape(g: Geometry, shape):
    """The array of a per-query statistic of `shape` in this geometry's layout."""
    return jax.ShapeDtypeStruct(shape + ((LANES,) if g.lane_dense else ()), jnp.float32)


def _call(kernel, grid, in_specs, out_specs, out_shape, interpret, name, g: Geometry, head_dim):
    # Wider tiles need more warps to hold them in registers.
    warps = g.num_warps or (4 if head_dim <= 64 else 8)
    # Every program writes its own outputs and walks its key or query blocks in a loop of its
    # own, so no grid axis carries a reduction: on TPU all three are parallel.
    params = None if interpret else compiler_params(
        num_warps=warps, num_stages=g.num_stages, dimension_semantics=("parallel",) * 3)
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                          out_specs=out_specs, interpret=interpret, name=name,
                          compiler_params=params)


@functools.partial(jax.jit, static_argnames=("g", "interpret"))
def forward(q, k, v, kmask, qseg, kseg, rscale, q_scale, k_scale, *, g: Geometry,
            interpret: bool):
    """q [B,H,Tq,D], k/v [B,Hkv,Tk,D], kmask and kseg [B,Tk], qseg and rscale [B,Tq] (all
    padded; on TPU laid out lane-dense, see above) -> (out, row statistic)."""
    b, h, tq, d = q.shape
    tk = k.shape[2]
    sp = _specs(g, q.shape, tk)
    return _call(
        functools.partial(_forward_kernel, g=g, num_k_blocks=tk // g.block_k),
        (b, h, tq // g.block_q),
        [sp["q_tile"], sp["whole_kv"], sp["whole_kv"], sp["kmask_whole"], sp["qseg_tile"],
         sp["kmask_whole"], sp["qseg_tile"], sp["vector"], sp["vector"]],
        [sp["q_tile"], sp["row_tile"]],
        [jax.ShapeDtypeStruct(q.shape, q.dtype), _row_shape(g, (b, h, tq))],
        interpret, f"norm_attention_{g.normalizer}_fwd", g, d)(q, k, v, kmask, qseg, kseg,
                                                              rscale, q_scale, k_scale)


@functools.partial(jax.jit, static_argnames=("g", "interpret"))
def backward(q, k, v, kmask, qseg, kseg, rscale, q_scale, k_scale, out, stat, dout, *,
             g: Geometry, interpret: bool):
    """-> dq, dk, dv, dq_scale, dk_scale (dk/dv summed over each key/value head's group)."""
    b, h, tq, d = q.shape
    h_kv, tk = k.shape[1], k.shape[2]
    delta = jnp.sum(out.astype(jnp.float32) * dout.astype(jnp.float32), axis=-1)
    delta = jnp.broadcast_to(delta[..., None], stat.shape) if g.lane_dense else delta
    sp = _specs(g, q.shape, tk)
    inputs = (q, k, v, kmask, qseg, kseg, rscale, q_scale, k_scale, dout, stat, delta)
    nq, nk = tq // g.block_q, tk // g.block_k
    dq, dqs = _call(
        functools.partial(_dq_kernel, g=g, num_k_blocks=nk), (b, h, nq),
        [sp["q_tile"], sp["whole_kv"], sp["whole_kv"], sp["kmask_whole"], sp["qseg_tile"],
         sp["kmask_whole"], sp["qseg_tile"], sp["vector"], sp["vector"], sp["q_tile"],
         sp["row_tile"], sp["row_tile"]],
        [sp["q_tile"], sp["partial"]],
        [jax.ShapeDtypeStruct(q.shape, q.dtype),
         jax.ShapeDtypeStruct((b, h, nq, 1, d), jnp.float32)],
        interpret, f"norm_attention_{g.normalizer}_dq", g, d)(*inputs)
    per_head = jax.ShapeDtypeStruct((b, h, tk, d), jnp.float32)
    head_tile = pl.BlockSpec((None, None, g.block_k, d), lambda bb, hh, j: (bb, hh, j, 0))
    dk, dv, dks = _call(
        functools.partial(_dkdv_kernel, g=g, num_q_blocks=nq), (b, h, nk),
        [sp["whole_q"], sp["kv_tile"], sp["kv_tile"], sp["kmask_tile"], sp["qseg_whole"],
         sp["kmask_tile"], sp["qseg_whole"], sp["vector"], sp["vector"], sp["whole_q"],
         sp["row_whole"], sp["row_whole"]],
        [head_tile, head_tile, sp["partial"]],
        [per_head, per_head, jax.ShapeDtypeStruct((b, h, nk, 1, d), jnp.float32)],
        interpret, f"norm_attention_{g.normalizer}_dkdv", g, d)(*inputs)
    # Query heads sharing a key/value head each wrote their own share; add them up.
    group = lambda x: x.reshape(b, h_kv, g.group, tk, d).sum(2)
    return (dq, group(dk).astype(k.dtype), group(dv).astype(v.dtype),
            dqs.sum((0, 1, 2, 3)), dks.sum((0, 1, 2, 3)))
