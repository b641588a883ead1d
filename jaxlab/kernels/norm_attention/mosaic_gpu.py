"""Hopper (sm_90) forward kernel for fused norm-attention in Mosaic GPU: TMA copies, wgmma
tile products and warp specialization, the structure that cuDNN's and FlashAttention-3's
kernels share and that our Triton kernel cannot express.

One program per (query head, 128 queries, batch) runs three warpgroups: two compute
warpgroups own 64 query rows each (one wgmma's height), and a memory warpgroup streams the key,
value and key-statistic blocks into a ring of `stages` SMEM slots. "Ready" barriers tell the
compute warpgroups a slot has landed; "free" barriers, one arrival per compute warpgroup, tell
the memory warpgroup it may overwrite it.

The norms stay fused without rewriting k per query block. Each compute warpgroup normalizes
its q tile once, in registers, and folds into it everything that multiplies a logit along
head_dim: both norms' gains (k's gain moves to the q side of the product), the logit scale and,
for softmax, log2 e (the exponentials are exp2). The keys enter the products raw; their norm
is per key row, so it is applied to the score tile's columns:

    s_ij = q'_i · k̂_j = rstd_j (q'_i · k_j) − rstd_j μ_j Σ_d q'_id      (μ = 0 for RMSNorm)

with rstd_j and rstd_j μ_j computed once per key in float32 before the kernel (`key_stats`),
one read of k. For LayerNorm the correction cancels the keys' mean inside the float32
product sum; Σ_d q' is taken over the rounded q' the product reads, so the two terms agree.

Causality is end-aligned (query i sees keys ≤ i + s − t) as in pallas.py; keys past the
unpadded length are masked in the last block. Outputs: o [b, t, h, d] and one float32
statistic per query, [b, h, t] (base-2 log-sum-exp of the kernel's logits for softmax, the ℓ1
sum for softplus), the residual pallas.py's backward kernels read.

Needs jax ≥ 0.11 (`plgpu.kernel` with a GPU interpreter), 16-bit inputs and a head dim that
is a multiple of 64 up to 256. On a CPU, `interpret=True` runs it in Mosaic GPU's interpreter.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxlab.kernels.norm_attention.pallas import Geometry

try:  # jax < 0.11 has no Mosaic GPU interpreter; `unsupported` says so
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:
    plgpu = None

BLOCK_Q = 64            # query rows per compute warpgroup: a wgmma's height
COMPUTE_WARPGROUPS = 2
ROWS_PER_PROGRAM = BLOCK_Q * COMPUTE_WARPGROUPS
LOG2_E = 1.4426950408889634
NEG = -1e30             # a finite "minus infinity", as in pallas.py


def default_block_kv(head_dim: int) -> int:
    """Keys per block: 128, or 64 above head dim 128 so that two stages fit in SMEM."""
    return 128 if head_dim <= 128 else 64


def smem_bytes(head_dim: int, block_kv: int, stages: int, itemsize: int = 2) -> int:
    """About the shared memory one program holds (the buffers; barriers are a few bytes)."""
    tiles = (COMPUTE_WARPGROUPS * BLOCK_Q + 2 * stages * block_kv) * head_dim * itemsize
    return tiles + stages * 2 * block_kv * 4 + COMPUTE_WARPGROUPS * (head_dim + BLOCK_Q) * 4


SMEM_BUDGET = 227 * 1024  # what an H100 lets one block hold


def unsupported(q, k, block_kv: int = 128, stages: int = 2) -> str | None:
    """Why this kernel cannot take these inputs, or None if it can."""
    d = q.shape[-1]
    if not available():
        return f"Mosaic GPU kernels need jax ≥ 0.11, this is {jax.__version__}"
    if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype:
        return f"the Mosaic GPU kernel takes bfloat16 or float16 inputs, got {q.dtype}"
    if d % 64 or d > 256:
        return f"the Mosaic GPU kernel needs a head dim that is a multiple of 64 up to 256, got {d}"
    if block_kv % 64 or block_kv > 256:
        return f"block_kv must be a multiple of 64 up to 256, got {block_kv}"
    if stages < 2:
        return f"stages must be at least 2, got {stages}"
    if smem_bytes(d, block_kv, stages) > SMEM_BUDGET:
        return (f"block_kv {block_kv} with {stages} stages at head dim {d} needs "
                f"{smem_bytes(d, block_kv, stages) // 1024} KiB of shared memory, over "
                f"{SMEM_BUDGET // 1024} KiB")
    return None


def available() -> bool:
    """Whether this jax has Mosaic GPU's `plgpu.kernel` and its interpreter."""
    return plgpu is not None and hasattr(plgpu, "kernel") and hasattr(plgpu,
                                                                     "InterpretGPUParams")


def key_stats(k, qk_norm: str | None, eps: float):
    """(rstd, rstd·mean) per key, each [b, h_kv, s] float32; mean 0 for RMSNorm."""
    x = jnp.swapaxes(k, 1, 2).astype(jnp.float32)  # [b, h_kv, s, d]
    mean = x.mean(-1) if qk_norm == "layer" else jnp.zeros(x.shape[:-1], jnp.float32)
    centered = x - mean[..., None]
    rstd = lax.rsqrt(jnp.square(centered).mean(-1) + eps)
    return rstd, rstd * mean


def forward(q, k, v, q_scale, k_scale, *, qk_norm: str | None, normalizer: str, causal: bool,
            sm_scale: float, eps: float, block_kv: int = 128, stages: int = 2,
            interpret: bool = False):
    """q [b, t, h, d], k and v [b, s, h_kv, d] (16-bit), gains [d] or None ->
    (o [b, t, h, d], statistic [b, h, t] float32)."""
    b, t, h, d = q.shape
    s_len, h_kv = k.shape[1], k.shape[2]
    # pallas.py's geometry: block_k keys per step, num_stages slots in the ring
    g = Geometry(block_q=BLOCK_Q, block_k=block_kv, q_len=t, k_len=s_len, group=h // h_kv,
                 causal=causal, normalizer=normalizer, qk_norm=qk_norm, sm_scale=sm_scale,
                 eps=eps, num_stages=stages, forward_kernel="mosaic")
    # Everything that multiplies a logit along head_dim, folded into the q side.
    gain = jnp.full((d,), sm_scale * (LOG2_E if normalizer == "softmax" else 1.0), jnp.float32)
    if qk_norm is not None:
        for scale in (q_scale, k_scale):
            if scale is not None:
                gain = gain * scale.astype(jnp.float32)
    tq = -(-t // ROWS_PER_PROGRAM) * ROWS_PER_PROGRAM
    tk = -(-s_len // block_kv) * block_kv
    q = jnp.pad(q, ((0, 0), (0, tq - t), (0, 0), (0, 0)))
    k, v = (jnp.pad(x, ((0, 0), (0, tk - s_len), (0, 0), (0, 0))) for x in (k, v))
    rstd, shift = key_stats(k, qk_norm, eps)
    stats = jnp.stack([rstd, shift], axis=2)  # [b, h_kv, 2, s]

    tiled = _tiled(d, q.dtype)
    scratch = (
        plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK_Q, d), q.dtype, transforms=tiled),   # q, then o
        plgpu.SMEM((stages, block_kv, d), k.dtype, transforms=tiled),
        plgpu.SMEM((stages, block_kv, d), v.dtype, transforms=tiled),
        plgpu.SMEM((stages, 2, block_kv), jnp.float32),                            # key stats
        plgpu.SMEM((COMPUTE_WARPGROUPS, d), jnp.float32),                           # gain
        plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK_Q), jnp.float32),                     # statistic
        # weights for the interpreter's p @ v, which needs them in SMEM (see _accumulate)
        plgpu.SMEM((COMPUTE_WARPGROUPS, BLOCK_Q, block_kv), q.dtype,
                   transforms=_tiled(block_kv, q.dtype)) if interpret else None,
    )
    # One barrier per copy: each copy arrives once on its barrier, with the bytes it brings.
    barriers = (
        plgpu.Barrier(num_barriers=COMPUTE_WARPGROUPS),   # q landed
        plgpu.Barrier(num_barriers=COMPUTE_WARPGROUPS),   # the gain landed
        plgpu.Barrier(num_barriers=stages),                # k landed
        plgpu.Barrier(num_barriers=stages),                # k's stats landed
        plgpu.Barrier(num_barriers=stages),                # v landed
        plgpu.Barrier(num_arrivals=COMPUTE_WARPGROUPS, num_barriers=stages),  # k slot free
        plgpu.Barrier(num_arrivals=COMPUTE_WARPGROUPS, num_barriers=stages),  # v slot free
    )

    def entry(q_ref, k_ref, v_ref, stats_ref, gain_ref, o_ref, stat_ref):
        pl.run_scoped(lambda smem, bars: _program(g, q_ref, k_ref, v_ref, stats_ref, gain_ref,
                                                  o_ref, stat_ref, *smem, *bars),
                      scratch, barriers, collective_axes="wg")

    params = dict(interpret=plgpu.InterpretGPUParams()) if interpret else dict(
        compiler_params=plgpu.CompilerParams(approx_math=True))
    o, stat = plgpu.kernel(
        entry,
        out_type=(jax.ShapeDtypeStruct(q.shape, q.dtype),
                  jax.ShapeDtypeStruct((b, h, tq), jnp.float32)),
        grid=(h, tq // ROWS_PER_PROGRAM, b), grid_names=("heads", "q_blocks", "batch"),
        num_threads=COMPUTE_WARPGROUPS + 1, thread_name="wg", **params,
    )(q, k, v, stats, gain)
    return o[:, :t], stat[:, :, :t]


def _tiled(row_length: int, dtype):
    """SMEM transforms for wgmma operands whose rows hold `row_length` values: 8-row tiles,
    swizzled by the widest pattern the row fits."""
    swizzle = plgpu.find_swizzle(row_length * jnp.dtype(dtype).itemsize * 8)
    return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
            plgpu.SwizzleTransform(swizzle))


def _kv_steps(g: Geometry, q_start):
    """(key blocks every query of rows [q_start, q_start + BLOCK_Q) sees whole, key blocks
    any of them sees)."""
    total = -(-g.k_len // g.block_k)
    whole = g.k_len // g.block_k   # the ragged last block needs the length mask
    if not g.causal:
        return whole, total
    offset = g.k_len - g.q_len
    first_seen = q_start + offset           # last key the block's first query sees
    last_seen = q_start + BLOCK_Q - 1 + offset
    whole_causal = jnp.clip((first_seen + 1) // g.block_k, 0, whole)
    seen = jnp.clip(last_seen // g.block_k + 1, 0, total)
    return jnp.minimum(whole_causal, seen), seen


def _program(g, q_ref, k_ref, v_ref, stats_ref, gain_ref, o_ref, stat_ref, q_smem, k_smem,
             v_smem, kstat_smem, gain_smem, stat_smem, p_smem, q_ready, gain_ready, k_ready,
             kstat_ready, v_ready, k_free, v_free):
    """One program: two compute warpgroups (`_compute`) and the memory warpgroup that feeds
    them (`_memory`)."""
    batch, head = lax.axis_index("batch"), lax.axis_index("heads")
    wg = lax.axis_index("wg")
    program_start = lax.axis_index("q_blocks") * ROWS_PER_PROGRAM
    # The memory warpgroup serves the later compute warpgroup, which sees the most keys.
    _, steps_max = _kv_steps(g, program_start + BLOCK_Q)

    @pl.when(wg < COMPUTE_WARPGROUPS)
    def _compute():
        plgpu.set_max_registers(232, action="increase")
        q_start = program_start + wg * BLOCK_Q
        q_tile = q_smem.at[wg]
        plgpu.copy_gmem_to_smem(q_ref.at[batch, pl.ds(q_start, BLOCK_Q), head], q_tile,
                                q_ready.at[wg])
        plgpu.copy_gmem_to_smem(gain_ref, gain_smem.at[wg], gain_ready.at[wg])
        plgpu.barrier_wait(q_ready.at[wg])
        plgpu.barrier_wait(gain_ready.at[wg])
        row_sum = _prepare_queries(g, q_tile, gain_smem.at[wg])
        whole, seen = _kv_steps(g, q_start)
        d = q_tile.shape[-1]
        per_row = plgpu.Layout.WGMMA.reduce(1)  # one value per row of a wgmma tile
        carry = (plgpu.layout_cast(jnp.full((BLOCK_Q,), NEG, jnp.float32), per_row),  # max
                 plgpu.layout_cast(jnp.zeros((BLOCK_Q,), jnp.float32), per_row),       # sum
                 plgpu.layout_cast(jnp.zeros((BLOCK_Q, d), jnp.float32), plgpu.Layout.WGMMA))
        step = functools.partial(_kv_step, g, q_tile, k_smem, v_smem, kstat_smem, k_ready,
                                 kstat_ready, v_ready, k_free, v_free, q_start, row_sum,
                                 None if p_smem is None else p_smem.at[wg])
        carry = lax.fori_loop(0, whole, functools.partial(step, masked=False), carry)
        m, l, acc = lax.fori_loop(whole, seen, functools.partial(step, masked=True), carry)

        def release(j, _):  # blocks only the other warpgroup needs: hand the slots back
            slot = lax.rem(j, g.num_stages)
            plgpu.barrier_wait(k_ready.at[slot])
            plgpu.barrier_wait(kstat_ready.at[slot])
            plgpu.barrier_arrive(k_free.at[slot])
            plgpu.barrier_wait(v_ready.at[slot])
            plgpu.barrier_arrive(v_free.at[slot])
        lax.fori_loop(seen, steps_max, release, None)

        seen_any = l > 0
        inv = jnp.where(seen_any, 1.0 / jnp.where(seen_any, l, 1.0), 0.0)
        q_tile[...] = (acc * lax.broadcast_in_dim(inv, acc.shape, [0])).astype(q_tile.dtype)
        if g.normalizer == "softmax":
            stat = jnp.where(seen_any, m + jnp.log(jnp.where(seen_any, l, 1.0)) * LOG2_E,
                             jnp.inf)
        else:
            stat = l
        stat_smem[wg] = stat
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_tile, o_ref.at[batch, pl.ds(q_start, BLOCK_Q), head])
        plgpu.copy_smem_to_gmem(stat_smem.at[wg], stat_ref.at[batch, head,
                                                              pl.ds(q_start, BLOCK_Q)])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == COMPUTE_WARPGROUPS)
    def _memory():
        plgpu.set_max_registers(40, action="decrease")
        kv_head = lax.div(head, jnp.int32(g.group))

        def load(j, slot):
            keys = (batch, pl.ds(j * g.block_k, g.block_k), kv_head)
            plgpu.copy_gmem_to_smem(k_ref.at[keys], k_smem.at[slot], k_ready.at[slot])
            plgpu.copy_gmem_to_smem(stats_ref.at[batch, kv_head, :,
                                                 pl.ds(j * g.block_k, g.block_k)],
                                    kstat_smem.at[slot], kstat_ready.at[slot])
            plgpu.copy_gmem_to_smem(v_ref.at[keys], v_smem.at[slot], v_ready.at[slot])

        for j in range(min(g.num_stages, -(-g.k_len // g.block_k))):  # blocks that exist
            pl.when(j < steps_max)(functools.partial(load, j, j))

        def refill(j, _):
            slot = lax.rem(j, g.num_stages)
            plgpu.barrier_wait(k_free.at[slot])
            plgpu.barrier_wait(v_free.at[slot])
            load(j, slot)
        lax.fori_loop(g.num_stages, steps_max, refill, None)

        def drain(j, _):  # observe the last blocks' release too, so every phase is waited on
            slot = lax.rem(j, g.num_stages)
            plgpu.barrier_wait(k_free.at[slot])
            plgpu.barrier_wait(v_free.at[slot])
        lax.fori_loop(jnp.maximum(steps_max, g.num_stages), steps_max + g.num_stages, drain, None)


def _prepare_queries(g, q_tile, gain_smem):
    """Normalize the q tile in place and fold the gain into it; returns Σ_d q' per row for
    LayerNorm's mean correction (None otherwise)."""
    x = q_tile[...].astype(jnp.float32)
    d = x.shape[-1]
    if g.qk_norm == "layer":
        x = x - lax.broadcast_in_dim(x.sum(axis=1) / d, x.shape, [0])
    if g.qk_norm is not None:
        rstd = lax.rsqrt((x * x).sum(axis=1) / d + g.eps)
        x = x * lax.broadcast_in_dim(rstd, x.shape, [0])
    gain = plgpu.load(gain_smem, layout=plgpu.Layout.WGMMA.reduce(0))
    q = (x * lax.broadcast_in_dim(gain, x.shape, [1])).astype(q_tile.dtype)
    q_tile[...] = q
    plgpu.commit_smem()
    return q.astype(jnp.float32).sum(axis=1) if g.qk_norm == "layer" else None


def _kv_step(g, q_tile, k_smem, v_smem, kstat_smem, k_ready, kstat_ready, v_ready, k_free,
             v_free, q_start, row_sum, p_smem, j, carry, *, masked: bool):
    m, l, acc = carry
    slot = lax.rem(j, g.num_stages)
    plgpu.barrier_wait(k_ready.at[slot])
    plgpu.barrier_wait(kstat_ready.at[slot])
    if g.qk_norm is not None:
        rstd = plgpu.load(kstat_smem.at[slot, 0], layout=plgpu.Layout.WGMMA.reduce(0))
        if g.qk_norm == "layer":
            shift = plgpu.load(kstat_smem.at[slot, 1], layout=plgpu.Layout.WGMMA.reduce(0))

    def product(acc_ref):
        plgpu.wgmma(acc_ref, q_tile, k_smem.at[slot].transpose((1, 0)))
        return acc_ref[...]
    s = pl.run_scoped(product, plgpu.ACC((BLOCK_Q, g.block_k), jnp.float32))
    plgpu.barrier_arrive(k_free.at[slot])
    columns = lambda x: lax.broadcast_in_dim(x, s.shape, [1])
    if g.qk_norm is not None:
        s = s * columns(rstd)
        if g.qk_norm == "layer":
            s = s - lax.broadcast_in_dim(row_sum, s.shape, [0]) * columns(shift)
    if masked:
        rows = plgpu.broadcasted_iota(jnp.int32, s.shape, 0, layout=plgpu.Layout.WGMMA)
        cols = plgpu.broadcasted_iota(jnp.int32, s.shape, 1, layout=plgpu.Layout.WGMMA)
        k_pos = cols + j * g.block_k
        visible = k_pos < g.k_len
        if g.causal:
            visible = visible & (rows + q_start + (g.k_len - g.q_len) >= k_pos)
    keep = (lambda x: jnp.where(visible, x, 0.0)) if masked else (lambda x: x)
    if g.normalizer == "softmax":
        if masked:
            s = jnp.where(visible, s, NEG)
        m_new = jnp.maximum(m, s.max(axis=1))
        alpha = jnp.exp2(m - m_new)
        p = keep(jnp.exp2(s - lax.broadcast_in_dim(m_new, s.shape, [0])))
        l = l * alpha + p.sum(axis=1)
        acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
        m = m_new
    else:
        # softplus(x) = max(x, 0) + log(1 + exp(−|x|)), in functions Mosaic GPU lowers
        p = keep(jnp.maximum(s, 0.0) + jnp.log(1.0 + jnp.exp(-jnp.abs(s))))
        l = l + p.sum(axis=1)
    plgpu.barrier_wait(v_ready.at[slot])
    acc = _accumulate(acc, p.astype(q_tile.dtype), v_smem.at[slot], p_smem)
    plgpu.barrier_arrive(v_free.at[slot])
    return m, l, acc


def _accumulate(acc, p, v_tile, p_smem):
    """acc + p @ v_tile. Compiled (p_smem None), the wgmma reads p from registers and adds into
    the accumulator's. Mosaic GPU's interpreter takes neither a register operand nor an
    initialized accumulator (`run_state`), so there p goes through SMEM and the product into a
    fresh accumulator plus an add: the same sum."""
    if p_smem is not None:
        p_smem[...] = p
        plgpu.commit_smem()

        def product(acc_ref):
            plgpu.wgmma(acc_ref, p_smem, v_tile)
            return acc_ref[...]
        return acc + pl.run_scoped(product, plgpu.ACC(acc.shape, jnp.float32))
    acc = pl.run_state(lambda acc_ref: plgpu.wgmma(acc_ref, p, v_tile))(plgpu.ACC.init(acc))
    plgpu.wgmma_wait(0)
    return acc
