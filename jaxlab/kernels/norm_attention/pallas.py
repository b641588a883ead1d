"""Flash-style Pallas kernels for fused norm-attention (forward, dQ, dK/dV).

Layout inside: [batch, heads, time, head_dim], time padded to the blocks. One program per
(batch, head, query block) walks the key blocks (forward, dQ); one per (batch, query head,
key block) walks the query blocks (dK/dV), so no program writes where another does. The q and
k norms are recomputed per tile: the only residual is one float32 statistic per query row
(log-sum-exp in base 2 for softmax, the ℓ1 sum for softplus). Key validity (padding, ragged
tail) comes in as a 0/1 vector per key and packed sequences as segment ids per query and key;
causality is end-aligned (query i sees keys ≤ i + s_len − t_len). Tile products take the
input dtype as operands and accumulate in float32 (jaxlab.kernels.tiles).

Per score the kernels do little besides the two products, so the elementwise work counts (at
head dim 64 it costs about as much as the products on a GPU): under a qk-norm the logit scale
is folded into the normalized q tile (times log2 e for softmax, whose exponentials are exp2,
one instruction where exp is several), and tiles that every query sees whole skip the mask.
Under causality those are the key blocks left of a query block's diagonal, unless a key mask,
key padding or segment ids make every tile masked. Without a norm the q tile stays exact and
the scores take the scale, one multiply each: folded, it would round q where the reference
does not, and at logits of 19 to 43 the values came out 3-5× further from the float32 answer
than the reference's (tests/kernels/test_norm_attention.py).

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
    key_masked: bool = True        # some key is masked or padding: the kernels read the mask


LOG2_E = 1.4426950408889634


def _logit_base(g: Geometry) -> float:
    """The kernels' logits are the true ones times this: log2 e for softmax (exp2), else 1."""
    return LOG2_E if g.normalizer == "softmax" else 1.0


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
    """[block_q, block_k] booleans: which keys of the tile each query may see. kmask, q_seg
    and k_seg load the tile's key mask (a [1, block_k] row) and segment ids (a column and a
    row); each is called only when the geometry has one."""
    q_pos = q_block * g.block_q + jax.lax.broadcasted_iota(jnp.int32, (g.block_q, g.block_k), 0)
    k_pos = k_block * g.block_k + jax.lax.broadcasted_iota(jnp.int32, (g.block_q, g.block_k), 1)
    visible = q_pos >= 0  # all true, in the tile's shape
    if g.key_masked:
        visible = visible & (kmask() > 0)
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


def _k_blocks_whole(g: Geometry, q_block, seen_blocks):
    """How many of the first key blocks every query of the block sees whole, so that their
    tiles need no mask: under causality those left of the diagonal; none if every tile needs
    the key mask or segment ids."""
    if g.key_masked or g.segmented:
        return 0
    if not g.causal:
        return seen_blocks
    first_query = q_block * g.block_q + (g.k_len - g.q_len)
    return jnp.clip((first_query + 1) // g.block_k, 0, seen_blocks)


def _q_block_start(g: Geometry, k_block):
    """First query block that can see key block `k_block` under causality."""
    if not g.causal:
        return 0
    first_query = k_block * g.block_k - (g.k_len - g.q_len)
    return jnp.maximum(first_query, 0) // g.block_q


def _q_blocks_seeing_whole(g: Geometry, k_block, start, num_q_blocks):
    """The first query block from which on every query sees key block `k_block` whole (so its
    tiles need no mask), at least `start`; num_q_blocks if every tile needs a mask."""
    if g.key_masked or g.segmented:
        return num_q_blocks
    if not g.causal:
        return start
    # a query sees the whole block once its position + the offset reaches the block's last key
    first_query = (k_block + 1) * g.block_k - 1 - (g.k_len - g.q_len)
    return jnp.clip(-(-first_query // g.block_q), start, num_q_blocks)


def _loop(lo, mid, hi, body, carry, masked_first: bool):
    """body(i, carry, masked) over [lo, hi): [lo, mid) masked and [mid, hi) not if
    masked_first, else [lo, mid) unmasked and [mid, hi) masked. Two loops, so that the unmasked
    tiles compile without the mask."""
    first, second = (True, False) if masked_first else (False, True)
    carry = jax.lax.fori_loop(lo, mid, lambda i, c: body(i, c, first), carry)
    return jax.lax.fori_loop(mid, hi, lambda i, c: body(i, c, second), carry)


def _q_tile(g: Geometry, q_ref, qs, row_scale):
    """(q tile, q̂, rstd, scale): the normalized q tile with the logit scale (and log2 e)
    folded in, or without a norm the tile as it came, whose scale `_scores` applies."""
    scale = (row_scale() * g.sm_scale if g.length_scaled else g.sm_scale) * _logit_base(g)
    q, qhat, rstd = _norm_rows(q_ref.astype(jnp.float32), qs, g.qk_norm, g.eps)
    return (q if g.qk_norm is None else q * scale), qhat, rstd, scale


def _scores(g: Geometry, q, k, scale, dtype):
    """The kernel's logits from a `_q_tile` q tile and a key tile."""
    s = mm_t(q, k, dtype)
    return s * scale if g.qk_norm is None else s


def _forward_kernel(q_ref, k_ref, v_ref, kmask_ref, qseg_ref, kseg_ref, rscale_ref, qs_ref,
                    ks_ref, o_ref, stat_ref, *, g: Geometry, num_k_blocks: int):
    q_block = pl.program_id(2)
    dtype = q_ref.dtype
    q, _, _, scale = _q_tile(g, q_ref[...], qs_ref[...].astype(jnp.float32),
                             lambda: get_rows(rscale_ref, g.lane_dense))
    ks = ks_ref[...].astype(jnp.float32)
    d = q.shape[1]

    def body(j, carry, masked):
        m, l, acc = carry
        rows = pl.ds(j * g.block_k, g.block_k)
        k, _, _ = _norm_rows(k_ref[rows, :].astype(jnp.float32), ks, g.qk_norm, g.eps)
        s = _scores(g, q, k, scale, dtype)
        if masked:
            visible = _visible(g, q_block, j, lambda: _key_row(g, kmask_ref, j),
                               lambda: get_rows(qseg_ref, g.lane_dense),
                               lambda: _key_row(g, kseg_ref, j))
            keep = lambda x: jnp.where(visible, x, 0.0)
        else:
            keep = lambda x: x
        if g.normalizer == "softmax":
            if masked:
                s = jnp.where(visible, s, NEG)
            m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
            # A row that has seen no key yet keeps m = NEG, so its exp2(0) needs the mask.
            w = keep(jnp.exp2(s - m_new))
            alpha = jnp.exp2(m - m_new)
            return (m_new, alpha * l + jnp.sum(w, axis=1, keepdims=True),
                    alpha * acc + mm(w, v_ref[rows, :], dtype))
        w = keep(jax.nn.softplus(s))
        return m, l + jnp.sum(w, axis=1, keepdims=True), acc + mm(w, v_ref[rows, :], dtype)

    # m and l are [block_q, 1] columns, which both the Triton and the Mosaic layouts take.
    init = (jnp.full((g.block_q, 1), NEG, jnp.float32), jnp.zeros((g.block_q, 1), jnp.float32),
            jnp.zeros((g.block_q, d), jnp.float32))
    seen_blocks = _k_blocks_for(g, q_block, num_k_blocks)
    m, l, acc = _loop(0, _k_blocks_whole(g, q_block, seen_blocks), seen_blocks, body, init,
                      masked_first=False)
    seen = l > 0
    o_ref[...] = jnp.where(seen, acc / jnp.where(seen, l, 1.0), 0.0).astype(o_ref.dtype)
    if g.normalizer == "softmax":
        stat = jnp.where(seen, m + jnp.log2(jnp.where(seen, l, 1.0)), jnp.inf)
    else:
        stat = l
    put_rows(stat_ref, stat, g.lane_dense)


def _score_grads(g: Geometry, s, visible, stat, dp, delta):
    """(p, dS) for one tile: p the attention weights, dS = ∂loss/∂(true logits); s the kernel's
    logits, stat and delta [block_q, 1] columns, visible None for a tile seen whole."""
    keep = (lambda x: x) if visible is None else (lambda x: jnp.where(visible, x, 0.0))
    if g.normalizer == "softmax":
        p = keep(jnp.exp2(s - stat))
        return p, p * (dp - delta)
    inv_l = jnp.where(stat > 0, 1.0 / jnp.where(stat > 0, stat, 1.0), 0.0)
    p = keep(jax.nn.softplus(s)) * inv_l
    return p, keep(jax.nn.sigmoid(s)) * inv_l * (dp - delta)


def _dq_kernel(q_ref, k_ref, v_ref, kmask_ref, qseg_ref, kseg_ref, rscale_ref, qs_ref, ks_ref,
               do_ref, stat_ref, delta_ref, dq_ref, dqs_ref, *, g: Geometry, num_k_blocks: int):
    q_block = pl.program_id(2)
    dtype = q_ref.dtype
    qs = qs_ref[...].astype(jnp.float32)
    q, qhat, q_rstd, scale = _q_tile(g, q_ref[...], qs, lambda: get_rows(rscale_ref, g.lane_dense))
    ks = ks_ref[...].astype(jnp.float32)
    do = do_ref[...]
    stat, delta = get_rows(stat_ref, g.lane_dense), get_rows(delta_ref, g.lane_dense)

    def body(j, dq, masked):
        rows = pl.ds(j * g.block_k, g.block_k)
        k, _, _ = _norm_rows(k_ref[rows, :].astype(jnp.float32), ks, g.qk_norm, g.eps)
        visible = _visible(g, q_block, j, lambda: _key_row(g, kmask_ref, j),
                           lambda: get_rows(qseg_ref, g.lane_dense),
                           lambda: _key_row(g, kseg_ref, j)) if masked else None
        _, ds = _score_grads(g, _scores(g, q, k, scale, dtype), visible, stat,
                             mm_t(do, v_ref[rows, :], dtype), delta)
        return dq + mm(ds, k, dtype)

    seen_blocks = _k_blocks_for(g, q_block, num_k_blocks)
    dq = _loop(0, _k_blocks_whole(g, q_block, seen_blocks), seen_blocks, body,
               jnp.zeros_like(q), masked_first=False)
    # ∂/∂(true logits) times k gives ∂/∂(q·scale): the scale without log2 e remains.
    dq, dqs = _norm_rows_vjp(dq * (scale / _logit_base(g)), qhat, q_rstd, qs, g.qk_norm)
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
    column = lambda ref, rows: get_rows(ref, g.lane_dense, rows)

    def body(i, carry, masked):
        dk, dv = carry
        rows = pl.ds(i * g.block_q, g.block_q)
        q, _, _, scale = _q_tile(g, q_ref[rows, :], qs, lambda: column(rscale_ref, rows))
        do = do_ref[rows, :]
        visible = _visible(g, i, k_block, lambda: _key_row(g, kmask_ref),
                           lambda: column(qseg_ref, rows),
                           lambda: _key_row(g, kseg_ref)) if masked else None
        p, ds = _score_grads(g, _scores(g, q, k, scale, dtype), visible,
                             column(stat_ref, rows), mm_t(do, v, dtype), column(delta_ref, rows))
        if g.qk_norm is None:  # the scale the q tile does not carry
            ds = ds * scale
        return dk + mm_tn(ds, q, dtype), dv + mm_tn(p, do, dtype)

    start = _q_block_start(g, k_block)
    dk, dv = _loop(start, _q_blocks_seeing_whole(g, k_block, start, num_q_blocks), num_q_blocks,
                   body, (jnp.zeros_like(k), jnp.zeros(v.shape, jnp.float32)),
                   masked_first=True)
    # The q tiles carried scale · log2 e; ∂/∂k needs q · scale.
    dk, dks = _norm_rows_vjp(dk / _logit_base(g), khat, k_rstd, ks, g.qk_norm)
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
