"""Hopper backward of mosaic_gpu.py's forward: a dQ kernel and a dK/dV kernel in Mosaic GPU,
with the norms' chain rule in XLA.

Split of the work. The kernels differentiate only what the forward's products see: the
prepared queries q' (normalized, gains and logit scale folded in), the raw keys k, the values
and the per-key statistics r = rstd and u = rstd·μ. With a = q'·k and the kernel's logits
s = r_j a_ij − u_j c_i (c_i = Σ_d q'_i), and ds = ∂loss/∂s:

    dq' = (ds ⊙ r) k            dc_i = −Σ_j ds_ij u_j                    (dQ kernel)
    dk  = (ds ⊙ r)ᵀ q'          dv = pᵀ dO                               (dK/dV kernel)
    dr_j = Σ_i ds_ij a_ij       du_j = −Σ_i ds_ij c_i

    softmax:  p = 2^(s − lse₂),        ds = ln 2 · p (dp − δ)
    softplus: p = softplus(s) / ℓ,      ds = sigmoid(s) / ℓ · (dp − δ)

with dp = dO vᵀ and δ_i = dO_i · o_i. The O(T²) work is in the two kernels; what is left is
per row, O(T·d): `jax.vjp` of the XLA functions that make q', c (`prepared_queries`) and
r, u (`key_stats`) turns (dq', dc) and (dr, du) into dq, dk and the gains' gradients, so that
part is right by construction. Without a norm q' = q, and the query's logit factor f_i takes
c_i's place: s = f_i a_ij, so the kernels take f ⊙ ds where the lines above read ds ⊙ r.

Programs: the dQ kernel runs like the forward, two compute warpgroups of 64 queries walking
key blocks of 64; the dK/dV kernel has two compute warpgroups of 64 keys each, per query head,
walking query blocks of 64 (the sums over a key/value head's group of query heads are XLA's).
Head dims up to 128: the dK/dV kernel holds two [64, d] float32 accumulators per thread group.

The split costs two tile products the dK/dV kernel also computes (q'·kᵀ and dO·vᵀ): 7 per
(query block, key block) where the FLOP count assumes 5. Where `dq_share` names a way, the
dK/dV kernel also forms dq' = (ds ⊙ r) k and adds it into a zeroed float32 dq' in global
memory with reducing TMA stores (a `jax.new_ref` the kernel updates in place); no dQ kernel
runs. The additions' order varies between runs, so dq' is not bit-for-bit reproducible then.
The ways (`DQ_SHARES`), per query block:

    "keys"       each compute warpgroup adds [64 queries, d] over its own 64 keys;
    "columns"    both warpgroups' ds meet in SMEM, and each adds [64, d/2] over all 128 keys
                 (head dim 128): half the global additions, half the accumulator registers;
    "alternate"  both warpgroups' ds meet in SMEM, and the block's owner (by parity) adds
                 [64, d] over all 128 keys: half the global additions.

Stop 17's H100 (bf16, causal, T=8192) ran "keys" at 1.22× the split's backward at head dim
64 and 0.50× at 128. Its reducing stores moved 4.3 GB at both: about 2.2 TB/s at 64, a rate
that may bound it, and 1.1 TB/s at 128, where the [64, 128] float32 share next to dK's and
dV's accumulators more likely spilled registers. "columns" halves both the stores and that
share, "alternate" the stores. Stop 23's H200 ran them and neither won: "alternate" at 0.96×
"keys" at 64, "columns" at 0.65× the split at 128 (DQ_SHARES has the rates).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxlab.kernels.norm_attention import mosaic_gpu as mg
from jaxlab.kernels.norm_attention.mosaic_gpu import BLOCK_Q, COMPUTE_WARPGROUPS, plgpu
from jaxlab.kernels.norm_attention.reference import head_norm

BLOCK = 64          # keys per dQ step, queries per dK/dV step
STAGES = 2
LN2 = math.log(2.0)
# How the dK/dV kernel adds its dq' shares, per head dim (see the module's docstring);
# "split", or a head dim not named, keeps the dQ kernel. On an H200 (stop 23, bf16, causal,
# T=8192, rms) the backward ran at head dim 64 at 359 TFLOP/s with "keys", 344 "alternate"
# and 289 "split"; at 128 at 364 "split", 236 "columns" and 190 "keys".
DQ_SHARES = {64: "keys"}
# The head dims each way takes: "columns" splits d at a 64-column SMEM tile's edge, and
# "alternate" at 128 needs 230 KiB of shared memory (over an H100's 227).
SHARE_WAYS = {"split": (64, 128), "keys": (64, 128), "columns": (128,), "alternate": (64,)}
# Whether LayerNorm moves dQ into the dK/dV kernel too (see `dq_share`), at head dim 64: at
# 128 its tile of centered keys takes the shared memory over an H100's 227 KiB. Built in
# stop 18; its compiled parity tests passed on an H200 in stop 23 ("keys" and "alternate"),
# so on, as for RMSNorm, where "keys" ran 1.24× as fast as "split". Its own speed is not yet
# timed: the benchmark's rows use rms.
LAYERNORM_DQ = True
# True: each backward step issues its independent tile products back to back and waits once:
# a = q'·kᵀ with dp = dO·vᵀ in both kernels, then dv += p·dO with dk += ds·q' in the dK/dV
# kernel (two waits a step there instead of four; jax's FlashAttention-3 example pairs dv's
# product with dp's). False: each product is waited for before the next is issued. The step
# holds a and dp at once anyway; pairing dv with dk keeps p ([64, 64] 16-bit: 16 registers a
# thread) alive through ds's arithmetic, which at head dim 128 may spill. Not yet timed on a
# GPU (the sweep runs with ptxas's report of registers and spills).
PAIRED_PRODUCTS = False


def dq_share(head_dim: int, qk_norm: str | None) -> str | None:
    """How the dK/dV kernel adds dQ (5 tile products per step pair, not 7), or None where the
    dQ kernel runs.

    LayerNorm's logits also reach q' through Σ_d q' (the keys' mean term). Stop 17 added each
    step's dΣq' share, a sum across the score tile's rows stored by a reducing TMA copy of a
    vector: it passed in the interpreter and failed the compiled parity test. With
    LAYERNORM_DQ the share product instead reads centered keys k − μ (a tile the kernel
    writes once), since s_ij = q'_i · r_j (k_j − μ_j): dq' = (ds ⊙ r)(k − μ) is then the
    whole gradient and dΣq' is zero."""
    way = DQ_SHARES.get(head_dim, "split")
    if head_dim not in SHARE_WAYS.get(way, ()):
        valid = [name for name, dims in SHARE_WAYS.items() if head_dim in dims]
        raise ValueError(f"DQ_SHARES[{head_dim}] = {way!r}: at head dim {head_dim} the ways "
                         f"are {valid}")
    layer_ok = qk_norm != "layer" or (LAYERNORM_DQ and head_dim == 64)
    return None if way == "split" or not layer_ok else way



def prepared_queries(q, q_scale, k_scale, row_scale, *, qk_norm, normalizer, sm_scale, eps):
    """(q' [b, t, h, d] in q's dtype, Σ_d q' [b, t, h] float32): the queries the forward's
    products read (mosaic_gpu._prepare_queries), as a differentiable XLA function; row_scale
    [b, t] the queries' logit factors. Without a norm: (q, each query's logit factor f), which
    the kernels put on the scores, s = f ⊙ a, and so on ds."""
    if qk_norm is None:
        factor = row_scale[:, :, None] * mg.logit_constant(normalizer, sm_scale)
        return q, jnp.broadcast_to(factor, q.shape[:3]).astype(jnp.float32)
    gain = mg.logit_gain(q.shape[-1], q_scale, k_scale, qk_norm=qk_norm,
                         normalizer=normalizer, sm_scale=sm_scale)
    x = head_norm(q, None, qk_norm, eps) * row_scale[:, :, None, None]
    q_prime = (x * gain).astype(q.dtype)
    return q_prime, q_prime.astype(jnp.float32).sum(-1)


def backward(q, k, v, q_scale, k_scale, key_mask, row_scale, out, stat, dout, *, qk_norm,
             normalizer, causal, sm_scale, eps, interpret: bool = False):
    """Gradients of mosaic_gpu.forward: (dq, dk, dv, dq_scale, dk_scale); q_scale and k_scale
    arrays, key_mask and row_scale as the forward took them, out [b, t, h, d] and stat
    [b, h, t] its outputs, dout the output's cotangent."""
    b, t, h, d = q.shape
    s_len, h_kv = k.shape[1], k.shape[2]
    group = h // h_kv
    g = mg.geometry(q, k, qk_norm=qk_norm, normalizer=normalizer, causal=causal,
                    sm_scale=sm_scale, eps=eps, block_k=BLOCK, stages=STAGES,
                    key_masked=key_mask is not None)
    row_scale = mg.padded_row_scale(row_scale, b, t, t)
    prepare = lambda q, q_scale, k_scale: prepared_queries(
        q, q_scale, k_scale, row_scale, qk_norm=qk_norm, normalizer=normalizer,
        sm_scale=sm_scale, eps=eps)
    (q_prime, sums), prepare_vjp = jax.vjp(prepare, q, q_scale, k_scale)
    (rstd, shift), stats_vjp = jax.vjp(lambda k: mg.key_stats(k, qk_norm, eps), k)
    delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), dout.astype(jnp.float32))
    # Per-query values [b, h, 3, t]; padded queries get the statistic that zeroes their
    # weights: +inf for softmax, 0 (no mass) for softplus.
    fill = jnp.inf if normalizer == "softmax" else 0.0
    tq = -(-t // mg.ROWS_PER_PROGRAM) * mg.ROWS_PER_PROGRAM
    pad_t = lambda x, value=0.0: jnp.pad(x, ((0, 0), (0, 0), (0, tq - t)), constant_values=value)
    per_query = jnp.stack([pad_t(stat, fill), pad_t(delta),
                           pad_t(jnp.swapaxes(sums, 1, 2))], axis=2)
    q_prime, dout_p = mg.pad_rows(q_prime, mg.ROWS_PER_PROGRAM), mg.pad_rows(
        dout.astype(q.dtype), mg.ROWS_PER_PROGRAM)
    k_p, v_p = mg.pad_rows(k, mg.ROWS_PER_PROGRAM), mg.pad_rows(v, mg.ROWS_PER_PROGRAM)
    tk = k_p.shape[1]
    per_key = mg.key_rows(rstd, shift, key_mask, tk)
    arrays = (q_prime, dout_p, per_query, k_p, v_p, per_key)
    share = dq_share(d, qk_norm)
    if share is not None:
        dk_heads, dv_heads, dstats, dq_prime = _dkdv(g, *arrays, interpret, share=share)
        dq_prime = dq_prime.astype(q.dtype)
        dsums = jnp.zeros((b, h, tq), jnp.float32)  # dq' took LayerNorm's Σq' path too
    else:
        dq_prime, dsums = _dq(g, *arrays, interpret)
        dk_heads, dv_heads, dstats = _dkdv(g, *arrays, interpret)
    by_group = lambda x: x[:, :s_len].astype(jnp.float32).reshape(b, s_len, h_kv, group,
                                                                  d).sum(3)
    dk, dv = by_group(dk_heads), by_group(dv_heads)
    dstats = dstats[:, :, :2, :s_len].reshape(b, h_kv, group, 2, s_len).sum(2)
    dq, dq_scale, dk_scale = prepare_vjp((dq_prime[:, :t], jnp.swapaxes(dsums[:, :, :t], 1, 2)))
    if qk_norm is not None:
        dk = dk + stats_vjp((dstats[:, :, 0], dstats[:, :, 1]))[0]
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), dq_scale, dk_scale


def _shapes(q_prime, k_p):
    b, tq, h, d = q_prime.shape
    return b, tq, h, d, k_p.shape[1]


def _dq(g, q_prime, dout, per_query, k, v, per_key, interpret):
    b, tq, h, d, tk = _shapes(q_prime, k)
    scratch = (
        plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK_Q, d), q_prime.dtype,
                   transforms=mg.tiled(d, q_prime.dtype)),                  # q', then dq'
        plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK_Q, d), dout.dtype,
                   transforms=mg.tiled(d, dout.dtype)),
        plgpu.SMEM((COMPUTE_WARPGROUPS, 3, BLOCK_Q), jnp.float32),          # stat, δ, Σq'
        plgpu.SMEM((STAGES, BLOCK, d), k.dtype, transforms=mg.tiled(d, k.dtype)),
        plgpu.SMEM((STAGES, mg.KEY_ROWS, BLOCK), jnp.float32),               # key rows
        plgpu.SMEM((STAGES, BLOCK, d), v.dtype, transforms=mg.tiled(d, v.dtype)),
        plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK_Q), jnp.float32),             # dΣq'
        mg.staging(BLOCK, q_prime.dtype, interpret),
    )
    barriers = (plgpu.Barrier(num_barriers=COMPUTE_WARPGROUPS),  # the query tiles landed
                *mg.ring_barriers(3, STAGES))

    def entry(*refs):
        pl.run_scoped(lambda smem, bars: _dq_program(g, *refs, *smem, *bars), scratch,
                      barriers, collective_axes="wg")

    return mg.launch(entry, (jax.ShapeDtypeStruct(q_prime.shape, q_prime.dtype),
                             jax.ShapeDtypeStruct((b, h, tq), jnp.float32)),
                     (h, tq // mg.ROWS_PER_PROGRAM, b), interpret)(
        q_prime, dout, per_query, k, v, per_key)


def _dq_program(g, q_ref, do_ref, rowval_ref, k_ref, v_ref, kstat_ref, dq_ref, dsum_ref,
                q_smem, do_smem, rowval_smem, k_smem, kstat_smem, v_smem, dsum_smem, p_smem,
                query_ready, k_ready, kstat_ready, v_ready, free):
    batch, head, wg, program_first = mg.program_axes(reverse=g.causal and mg.HEAVIEST_FIRST)
    _, steps = mg.key_blocks(g, program_first + BLOCK_Q)
    readies = (k_ready, kstat_ready, v_ready)

    @pl.when(wg < COMPUTE_WARPGROUPS)
    def _compute():
        plgpu.set_max_registers(mg.REGISTERS[COMPUTE_WARPGROUPS][0], action="increase")
        q_first = program_first + wg * BLOCK_Q
        rows_here = pl.ds(q_first, BLOCK_Q)
        q_tile, do_tile, rowvals = q_smem.at[wg], do_smem.at[wg], rowval_smem.at[wg]
        mg.copy_in([(q_ref.at[batch, rows_here, head], q_tile),
                    (do_ref.at[batch, rows_here, head], do_tile),
                    (rowval_ref.at[batch, head, :, rows_here], rowvals)], query_ready.at[wg])
        stat, delta, q_values = (mg.load_vector(rowvals.at[i], per_row=True)
                                 for i in range(3))
        whole, seen = mg.key_blocks(g, q_first)
        zeros = lambda shape, layout: plgpu.layout_cast(jnp.zeros(shape, jnp.float32), layout)
        carry = (zeros(q_tile.shape, plgpu.Layout.WGMMA),
                 zeros((BLOCK_Q,), plgpu.Layout.WGMMA.reduce(1)))
        step = functools.partial(_dq_step, g, q_tile, do_tile, k_smem, kstat_smem, v_smem,
                                 readies, free, q_first, (stat, delta, q_values),
                                 None if p_smem is None else p_smem.at[wg])
        carry = lax.fori_loop(0, whole, functools.partial(step, masked=False), carry)
        dq, dsum = lax.fori_loop(whole, seen, functools.partial(step, masked=True), carry)
        lax.fori_loop(seen, steps, mg.release(readies, free, 0, STAGES), None)
        q_tile[...] = dq.astype(q_tile.dtype)
        dsum_smem[wg] = dsum
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_tile, dq_ref.at[batch, rows_here, head])
        plgpu.copy_smem_to_gmem(dsum_smem.at[wg], dsum_ref.at[batch, head, rows_here])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WARPGROUPS)
    def _memory():
        plgpu.set_max_registers(mg.REGISTERS[COMPUTE_WARPGROUPS][1], action="decrease")
        kv_head = lax.div(head, jnp.int32(g.group))
        keys = lambda j: (batch, pl.ds(j * BLOCK, BLOCK), kv_head)
        mg.produce([(lambda j: k_ref.at[keys(j)], k_smem, k_ready),
                    (lambda j: kstat_ref.at[batch, kv_head, :, pl.ds(j * BLOCK, BLOCK)],
                     kstat_smem, kstat_ready),
                    (lambda j: v_ref.at[keys(j)], v_smem, v_ready)], free, 0, steps, STAGES,
                   k_ref.shape[1] // BLOCK)


def _score_grads(g, s, stat, dp, delta, seen):
    """(p, ds) of a score tile; stat and delta already broadcast to its shape; seen None for
    a tile seen whole."""
    if g.normalizer == "softmax":
        p = jnp.exp2(s - stat)
        ds = LN2 * p * (dp - delta)
    else:
        inv = jnp.where(stat > 0, 1.0 / jnp.where(stat > 0, stat, 1.0), 0.0)
        p = mg.softplus(s) * inv
        ds = inv / (1.0 + jnp.exp(-s)) * (dp - delta)
    if seen is not None:
        p, ds = jnp.where(seen, p, 0.0), jnp.where(seen, ds, 0.0)
    return p, ds


def _dq_step(g, q_tile, do_tile, k_smem, kstat_smem, v_smem, readies, free, q_first, row_values,
             p_smem, j, carry, *, masked: bool):
    dq, dsum = carry
    k_ready, kstat_ready, v_ready = readies
    stat, delta, q_values = row_values  # q_values: Σ_d q' (LayerNorm) or f (no norm)
    slot = lax.rem(j, STAGES)
    plgpu.barrier_wait(k_ready.at[slot])
    plgpu.barrier_wait(kstat_ready.at[slot])
    shape = (BLOCK_Q, BLOCK)
    scores = (q_tile, k_smem.at[slot].transpose((1, 0)))
    values = (do_tile, v_smem.at[slot].transpose((1, 0)))
    if PAIRED_PRODUCTS:
        plgpu.barrier_wait(v_ready.at[slot])
        a, dp = mg.separate_products([scores, values], shape)
        s = mg.normed_scores(g, a, kstat_smem.at[slot], q_values)
    else:
        a = mg.product(*scores, shape)
        s = mg.normed_scores(g, a, kstat_smem.at[slot], q_values)
        plgpu.barrier_wait(v_ready.at[slot])
        dp = mg.product(*values, shape)
    seen = None
    if masked:
        valid = (mg.load_vector(kstat_smem.at[slot, 2], per_row=False) if g.key_masked
                 else None)
        seen = mg.visible(g, shape, q_first, j * BLOCK, valid=valid)
    _, ds = _score_grads(g, s, mg.rows(stat, shape), dp, mg.rows(delta, shape), seen)
    if g.qk_norm is None:
        ds = ds * mg.rows(q_values, shape)
    else:
        per_key = kstat_smem.at[slot]
        if g.qk_norm == "layer":
            shift = mg.load_vector(per_key.at[1], per_row=False)
            dsum = dsum - (ds * mg.cols(shift, shape)).sum(axis=1)
        ds = ds * mg.cols(mg.load_vector(per_key.at[0], per_row=False), shape)
    dq = mg.accumulate(dq, ds.astype(q_tile.dtype), k_smem.at[slot], p_smem)
    plgpu.barrier_arrive(free.at[slot])
    return dq, dsum


def _dkdv(g, q_prime, dout, per_query, k, v, per_key, interpret, share: str | None = None):
    """(dk, dv per query head, key-row gradients) and with a `share` way also dq'
    [b, tq, h, d] float32, summed over the programs' shares (see `dq_share`)."""
    b, tq, h, d, tk = _shapes(q_prime, k)
    with_dq, meet = share is not None, share in ("columns", "alternate")
    share_columns = d // 2 if share == "columns" else d
    scratch = (
        plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK_Q, d), k.dtype,
                   transforms=mg.tiled(d, k.dtype)),                         # k, then dk
        plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK_Q, d), v.dtype,
                   transforms=mg.tiled(d, v.dtype)),                         # v, then dv
        plgpu.SMEM((COMPUTE_WARPGROUPS, mg.KEY_ROWS, BLOCK_Q), jnp.float32),  # key rows, then d
        plgpu.SMEM((STAGES, BLOCK, d), q_prime.dtype, transforms=mg.tiled(d, q_prime.dtype)),
        plgpu.SMEM((STAGES, BLOCK, d), dout.dtype, transforms=mg.tiled(d, dout.dtype)),
        plgpu.SMEM((STAGES, 3, BLOCK), jnp.float32),                         # stat, δ, Σq'
        mg.staging(BLOCK, q_prime.dtype, interpret),
        None if not with_dq else (
            # ds ⊙ r; where the warpgroups meet, one per step parity: one warpgroup may
            # write the next step's while the other still reads this one's
            plgpu.SMEM((2 if meet else 1, COMPUTE_WARPGROUPS, BLOCK_Q, BLOCK), q_prime.dtype,
                       transforms=mg.tiled(BLOCK, q_prime.dtype)),
            plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK, share_columns), jnp.float32),  # dq' share
            # LayerNorm: the centered keys k − μ that the share product reads
            plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK_Q, d), k.dtype, transforms=mg.tiled(d, k.dtype))
            if g.qk_norm == "layer" else None),
    )
    barriers = (plgpu.Barrier(num_barriers=COMPUTE_WARPGROUPS),  # the key tiles landed
                *mg.ring_barriers(3, STAGES),
                # where the warpgroups meet: both steps' ds are in SMEM
                plgpu.Barrier(num_arrivals=COMPUTE_WARPGROUPS) if meet else None)
    inputs = (q_prime, dout, per_query, k, v, per_key)
    if with_dq:
        # A zeroed sum the programs add into. Mosaic GPU's interpreter has no reducing store,
        # so interpreted each (program, warpgroup) writes a slab of its own, summed here.
        slabs = (tk // BLOCK_Q,) if interpret else ()
        inputs += (jax.new_ref(jnp.zeros((b, *slabs, tq, h, d), jnp.float32)),)

    def entry(*refs):
        program = lambda smem, bars: _dkdv_program(g, *refs, *smem, *bars, share=share,
                                                   interpret=interpret)
        pl.run_scoped(program, scratch, barriers, collective_axes="wg")

    heads_shape = (b, tk, h, d)
    dk, dv, dstats = mg.launch(entry, (jax.ShapeDtypeStruct(heads_shape, k.dtype),
                                       jax.ShapeDtypeStruct(heads_shape, v.dtype),
                                       jax.ShapeDtypeStruct((b, h, mg.KEY_ROWS, tk),
                                                            jnp.float32)),
                               (h, tk // mg.ROWS_PER_PROGRAM, b), interpret)(*inputs)
    if not with_dq:
        return dk, dv, dstats
    dq_prime = inputs[-1][...]
    return dk, dv, dstats, dq_prime.sum(1) if interpret else dq_prime


def _query_blocks(g, k_first, num_blocks):
    """(first query block that sees any of keys [k_first, k_first + BLOCK_Q), first from
    which every query sees them all): blocks before the second need the mask, and with a key
    mask every block does."""
    if not g.causal:
        return 0, num_blocks if g.key_masked else 0
    offset = g.k_len - g.q_len
    first = jnp.clip((k_first - offset) // BLOCK, 0, num_blocks)
    whole = jnp.clip(-(-(k_first + BLOCK_Q - 1 - offset) // BLOCK), first, num_blocks)
    return first, num_blocks if g.key_masked else whole


def _dkdv_program(g, q_ref, do_ref, rowval_ref, k_ref, v_ref, kstat_ref, *refs,
                  share: str | None, interpret: bool):
    dq_ref, refs = (refs[0], refs[1:]) if share is not None else (None, refs)
    (dk_ref, dv_ref, dstat_ref, k_smem, v_smem, kstat_smem, q_smem, do_smem, rowval_smem, p_smem,
     dq_smem, key_ready, q_ready, do_ready, rowval_ready, free, meeting) = refs
    batch, head, wg, program_first = mg.program_axes()
    num_blocks = q_ref.shape[1] // BLOCK
    lo, _ = _query_blocks(g, program_first, num_blocks)  # the earlier keys' first block
    readies = (q_ready, do_ready, rowval_ready)

    @pl.when(wg < COMPUTE_WARPGROUPS)
    def _compute():
        plgpu.set_max_registers(mg.REGISTERS[COMPUTE_WARPGROUPS][0], action="increase")
        k_first = program_first + wg * BLOCK_Q
        keys_here = pl.ds(k_first, BLOCK_Q)
        kv_head = lax.div(head, jnp.int32(g.group))
        k_tile, v_tile, kstats = k_smem.at[wg], v_smem.at[wg], kstat_smem.at[wg]
        mg.copy_in([(k_ref.at[batch, keys_here, kv_head], k_tile),
                    (v_ref.at[batch, keys_here, kv_head], v_tile),
                    (kstat_ref.at[batch, kv_head, :, keys_here], kstats)], key_ready.at[wg])
        rstd, shift, valid = (mg.load_vector(kstats.at[i], per_row=True)
                              for i in range(mg.KEY_ROWS))
        first, whole = _query_blocks(g, k_first, num_blocks)
        zeros = lambda shape, layout: plgpu.layout_cast(jnp.zeros(shape, jnp.float32), layout)
        per_row = plgpu.Layout.WGMMA.reduce(1)
        carry = (zeros(k_tile.shape, plgpu.Layout.WGMMA), zeros(v_tile.shape, plgpu.Layout.WGMMA),
                 zeros((BLOCK_Q,), per_row), zeros((BLOCK_Q,), per_row))
        add_dq = None  # what adds a step's dq' share, with a share way
        if share is not None:
            ds_smem, share_smem, centered_smem = dq_smem
            share_keys = k_smem  # the keys dq' = (ds ⊙ r) · keys reads
            if centered_smem is not None:
                share_keys = centered_smem
                _center_keys(k_tile, centered_smem.at[wg], rstd, shift)
            if share == "keys":
                add_dq = functools.partial(_add_dq_share, dq_ref, (ds_smem.at[0, wg],
                                                                   share_smem.at[wg]),
                                           share_keys.at[wg], (batch, head, wg), interpret)
            else:
                add_dq = functools.partial(_add_met_dq_share, share, dq_ref,
                                           (ds_smem, share_smem), share_keys, meeting,
                                           (batch, head, wg, lo), interpret)
        release = mg.release(readies, free, lo, STAGES)

        def skip(j, _):  # a query block none of this warpgroup's keys see
            release(j, None)
            if meeting is not None:  # the other warpgroup's keys may see it: meet that one
                add_dq(j, None)
        lax.fori_loop(lo, first, skip, None)
        step = functools.partial(_dkdv_step, g, k_tile, v_tile, q_smem, do_smem, rowval_smem,
                                 readies, free, lo, k_first, (rstd, shift, valid),
                                 None if p_smem is None else p_smem.at[wg], add_dq)
        carry = lax.fori_loop(first, whole, functools.partial(step, masked=True), carry)
        dk, dv, drstd, dshift = lax.fori_loop(whole, num_blocks,
                                              functools.partial(step, masked=False), carry)
        if meeting is not None:  # the other warpgroup's last dq' share has read our k tile
            mg.take_turn(meeting)
        k_tile[...] = dk.astype(k_tile.dtype)
        v_tile[...] = dv.astype(v_tile.dtype)
        kstats[0] = drstd
        kstats[1] = dshift
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(k_tile, dk_ref.at[batch, keys_here, head])
        plgpu.copy_smem_to_gmem(v_tile, dv_ref.at[batch, keys_here, head])
        plgpu.copy_smem_to_gmem(kstats, dstat_ref.at[batch, head, :, keys_here])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WARPGROUPS)
    def _memory():
        plgpu.set_max_registers(mg.REGISTERS[COMPUTE_WARPGROUPS][1], action="decrease")
        queries = lambda j: (batch, pl.ds(j * BLOCK, BLOCK), head)
        mg.produce([(lambda j: q_ref.at[queries(j)], q_smem, q_ready),
                    (lambda j: do_ref.at[queries(j)], do_smem, do_ready),
                    (lambda j: rowval_ref.at[batch, head, :, pl.ds(j * BLOCK, BLOCK)],
                     rowval_smem, rowval_ready)], free, lo, num_blocks, STAGES, num_blocks)


def _dkdv_step(g, k_tile, v_tile, q_smem, do_smem, rowval_smem, readies, free, lo, k_first,
               key_values, p_smem, add_dq, j, carry, *, masked: bool):
    """One query block against this warpgroup's keys; tiles are [keys, queries]. add_dq: None,
    or what adds this step's dq' share (`_add_dq_share`)."""
    dk, dv, drstd, dshift = carry
    q_ready, do_ready, rowval_ready = readies
    rstd, shift, valid = key_values
    slot = lax.rem(j - lo, STAGES)
    for ready in readies:
        plgpu.barrier_wait(ready.at[slot])
    shape = (BLOCK_Q, BLOCK)
    # q_values: Σ_d q' (LayerNorm) or each query's logit factor f (no norm)
    stat, delta, q_values = (mg.load_vector(rowval_smem.at[slot, i], per_row=False)
                             for i in range(3))
    scores = (k_tile, q_smem.at[slot].transpose((1, 0)))
    values = (v_tile, do_smem.at[slot].transpose((1, 0)))
    if PAIRED_PRODUCTS:
        a, dp = mg.separate_products([scores, values], shape)
    else:
        a = mg.product(*scores, shape)
    if g.qk_norm is None:
        s = a * mg.cols(q_values, shape)
    else:
        s = a * mg.rows(rstd, shape)
        if g.qk_norm == "layer":
            s = s - mg.rows(shift, shape) * mg.cols(q_values, shape)
    if not PAIRED_PRODUCTS:
        dp = mg.product(*values, shape)
    seen = mg.visible(g, shape, j * BLOCK, k_first, keys_on_rows=True,
                      valid=valid if g.key_masked else None) if masked else None
    p, ds = _score_grads(g, s, mg.cols(stat, shape), dp, mg.cols(delta, shape), seen)
    p = p.astype(v_tile.dtype)
    if not PAIRED_PRODUCTS:
        dv = mg.accumulate(dv, p, do_smem.at[slot], p_smem)
    if g.qk_norm is None:
        ds = ds * mg.cols(q_values, shape)
    else:
        drstd = drstd + (ds * a).sum(axis=1)
        if g.qk_norm == "layer":
            dshift = dshift - (ds * mg.cols(q_values, shape)).sum(axis=1)
        ds = ds * mg.rows(rstd, shape)
    ds = ds.astype(k_tile.dtype)
    if PAIRED_PRODUCTS:
        dv, dk = mg.accumulate_all([dv, dk], [p, ds], [do_smem.at[slot], q_smem.at[slot]],
                                   p_smem)
    else:
        dk = mg.accumulate(dk, ds, q_smem.at[slot], p_smem)
    plgpu.barrier_arrive(free.at[slot])
    if add_dq is not None:
        add_dq(j, ds)
    return dk, dv, drstd, dshift


def _center_keys(k_tile, centered, rstd, shift):
    """Write k − μ of this warpgroup's keys into `centered`, μ = (rstd·μ) / rstd per key (0
    for padding keys, whose rstd is 0)."""
    mean = jnp.where(rstd > 0, shift / jnp.where(rstd > 0, rstd, 1.0), 0.0)
    keys = k_tile[...].astype(jnp.float32)
    centered[...] = (keys - mg.rows(mean, keys.shape)).astype(centered.dtype)
    plgpu.commit_smem()


def _add_dq_share(dq_ref, dq_smem, k_tile, where, interpret, j, ds):
    """Add query block j's dq' = (ds ⊙ r) k over this warpgroup's keys into the float32 sum
    in global memory. ds [keys, queries] goes through SMEM, where the product reads it
    transposed. Compiled, the store adds (TMA reduction) and runs on while the next step
    computes; its SMEM is reused once the store has read it."""
    ds_smem, share_smem = dq_smem
    batch, head, wg = where
    ds_smem[...] = ds
    plgpu.commit_smem()
    share = mg.product(ds_smem.transpose((1, 0)), k_tile, share_smem.shape)
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the last step's share left SMEM
    share_smem[...] = share
    plgpu.commit_smem()
    # interpreted, a slab per (program, warpgroup): see _dkdv
    slab = (lax.axis_index("blocks") * COMPUTE_WARPGROUPS + wg,) if interpret else ()
    rows_here = pl.ds(j * BLOCK, BLOCK)
    plgpu.copy_smem_to_gmem(share_smem, dq_ref.at[(batch, *slab, rows_here, head)],
                            reduction_op=None if interpret else "add")


def _add_met_dq_share(way, dq_ref, dq_smem, k_smem, meeting, where, interpret, j, ds):
    """The "columns" and "alternate" ways of `_add_dq_share`: this warpgroup's ds ⊙ r (zeros
    where its keys see no query of block j: ds None) goes to SMEM, the compute warpgroups
    meet, and this one adds its part of dq' = Σ over both key tiles of (ds ⊙ r)ᵀ k: half the
    columns, or all of them in the steps it owns."""
    ds_smem, share_smem = dq_smem
    batch, head, wg, lo = where
    parity = lax.rem(j - lo, 2)
    if ds is None:
        ds = plgpu.layout_cast(jnp.zeros(ds_smem.shape[2:], ds_smem.dtype),
                               plgpu.Layout.WGMMA)
    ds_smem[parity, wg] = ds
    plgpu.commit_smem()
    mg.take_turn(meeting)
    rows_here = pl.ds(j * BLOCK, BLOCK)
    slab = (lax.axis_index("blocks") * COMPUTE_WARPGROUPS + wg,) if interpret else ()
    width = share_smem.shape[-1]

    def add(columns):
        pairs = [(ds_smem.at[parity, w].transpose((1, 0)), k_smem.at[w, :, columns])
                 for w in range(COMPUTE_WARPGROUPS)]
        total = mg.products(pairs, share_smem.shape[1:])
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the last share left SMEM
        share_smem[wg] = total
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(share_smem.at[wg],
                                dq_ref.at[(batch, *slab, rows_here, head, columns)],
                                reduction_op=None if interpret else "add")

    if way == "columns":
        for w in range(COMPUTE_WARPGROUPS):
            pl.when(wg == w)(functools.partial(add, pl.ds(w * width, width)))
    else:
        pl.when(lax.rem(j, COMPUTE_WARPGROUPS) == wg)(functools.partial(add, pl.ds(0, width)))
