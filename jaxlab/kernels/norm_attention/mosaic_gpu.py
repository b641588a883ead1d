"""Hopper (sm_90) forward kernel for fused norm-attention in Mosaic GPU: TMA copies, wgmma
tile products and warp specialization, the structure that cuDNN's and FlashAttention-3's
kernels share and that our Triton kernel cannot express. mosaic_backward.py holds the
backward kernels, built from the helpers here.

One program per (query head, 128 queries, batch) runs three warpgroups: two compute
warpgroups own 64 query rows each (one wgmma's height), and a memory warpgroup streams the key,
value and key-statistic blocks into a ring of `stages` SMEM slots (`produce`). "Ready"
barriers tell the compute warpgroups a slot has landed; a "free" barrier, one arrival per
compute warpgroup, tells the memory warpgroup it may overwrite it (with EARLY_KEY_RELEASE the
keys' part of a slot has a free barrier of its own). Under the "pingpong" schedule
(FORWARD_SCHEDULE) a third barrier makes the compute warpgroups alternate on the tensor cores
(`take_turn`). FORWARD_WARPGROUPS may give the forward three compute warpgroups
(192 queries) instead.

The norms stay fused without rewriting k per query block. Each compute warpgroup normalizes
its q tile once, in registers, and folds into it everything that multiplies a logit along
head_dim (`logit_gain`): both norms' gains (k's gain moves to the q side of the product), the
logit scale and, for softmax, log2 e (the exponentials are exp2). The keys enter the products
raw; their norm is per key row, so it is applied to the score tile's columns:

    s_ij = q'_i · k̂_j = rstd_j (q'_i · k_j) − rstd_j μ_j Σ_d q'_id      (μ = 0 for RMSNorm)

with rstd_j and rstd_j μ_j computed once per key in float32 before the kernel (`key_stats`),
one read of k. For LayerNorm the correction cancels the keys' mean inside the float32
product sum; Σ_d q' is taken over the rounded q' the product reads, so the two terms agree.
Without a norm the q tile stays as it came, and each query's logit factor f_i (the logit scale,
log2 e, its row scale) multiplies the float32 scores, s_ij = f_i (q_i · k_j), as in
FlashAttention-3 and cuDNN: folded into q it would round q a second time where the reference
never rounds it, and at logits up to 43 that moved the values 5× further from the float32
answer than the reference's own rounding (tests/kernels/test_mosaic_gpu.py).

Causality is end-aligned (query i sees keys ≤ i + s − t) as in pallas.py; keys past the
unpadded length are masked in the last block. Outputs: o [b, t, h, d] and one float32
statistic per query, [b, h, t]: the base-2 log-sum-exp of the kernel's logits for softmax
(+inf for a row that sees no key), the ℓ1 sum for softplus.

Needs jax ≥ 0.11 (`plgpu.kernel` with a GPU interpreter), 16-bit inputs and head dim 64 or
128. On a CPU, `interpret=True` runs it in Mosaic GPU's interpreter, and lowering for CUDA
(`dispatch.target("gpu")`) runs Mosaic GPU's layout inference and shared-memory check. The
interpreter's warpgroups wait on one another inside host callbacks that share the CPU
client's thread pool, NPROC threads (default: the cores); on a 2-core machine that pool can
run out and the kernel hang, so set NPROC=8 or more there (tests/conftest.py does).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxlab.kernels import dispatch
from jaxlab.kernels.norm_attention.pallas import Geometry

try:  # jax < 0.11 has no Mosaic GPU interpreter; `unsupported` says so
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:
    plgpu = None

BLOCK_Q = 64            # query rows per compute warpgroup: a wgmma's height
COMPUTE_WARPGROUPS = 2  # the backward's, and the forward's unless FORWARD_WARPGROUPS says
ROWS_PER_PROGRAM = BLOCK_Q * COMPUTE_WARPGROUPS
# The forward's compute warpgroups per head dim. Three (192 query rows per program, as
# FlashAttention-3 runs head dim 64) share each key block among 1.5× the rows and keep more
# products in flight; they run without ping-pong, whose turns pair two warpgroups. At head dim
# 128 their [64, 128] float32 output and score tiles would not fit the 160 registers each gets.
# On an H200 (stop 23, bf16, causal, T=8192) three ran the forward at 263-267 TFLOP/s, two
# without ping-pong at 271 and two with it at 280, so two stay.
FORWARD_WARPGROUPS = {64: 2, 128: 2}
WARPGROUP_HEAD_DIMS = {2: (64, 128), 3: (64,)}  # the head dims each count takes
# Registers per thread (compute warpgroup, memory warpgroup) by compute warpgroups: an SM's
# 64K spread over the program's threads, most to the warpgroups that hold the tiles.
REGISTERS = {2: (232, 40), 3: (160, 24)}
LOG2_E = 1.4426950408889634
NEG = -1e30             # a finite "minus infinity", as in pallas.py
FORWARD_BLOCK_K = 128   # keys per forward step: two stages of them fit in SMEM at head dim 128
KEY_ROWS = 3            # per key: rstd, rstd·μ, 1 if it may be seen else 0
# How the forward's compute warpgroups keep the tensor cores busy through their softmax:
# - "plain": each runs its products and its softmax in turn;
# - "pingpong": the two compute warpgroups take turns on the tensor cores (FlashAttention-3's
#   "ping-pong"), so one's softmax runs while the other's products do. Against "plain" on an
#   H100 (stop 17, bf16, causal, T=8192) it ran the forward 1.09× as fast at head dim 64 and
#   1.01× at 128; on an H200 (stop 23) 1.03× and 1.02×;
# - "fenced": "pingpong" with the softmax's results held at an optimization barrier before the
#   warpgroup hands over its turn, so that the compiler cannot sink softmax work into the other
#   warpgroup's turn (jax's FlashAttention-3 example does this and found the order mattered).
#   Not yet timed;
# - "overlap": each warpgroup issues the next key block's q·kᵀ and this block's p·v, then runs
#   the next block's softmax while its own p·v runs (FlashAttention-3's intra-warpgroup
#   overlap; `_overlapped_blocks`). Not yet timed;
# - "pingpong+overlap": both, as FlashAttention-3 runs them: each warpgroup issues its two
#   products on its turn and runs its softmax on the other's. Not yet timed.
# The overlapping schedules need every query block to see a key, so causal attention with more
# queries than keys drops the overlap; the turn-taking ones pair two warpgroups, so with three
# they drop the turns (`forward_schedule`).
SCHEDULES = ("plain", "pingpong", "fenced", "overlap", "pingpong+overlap")
TURN_TAKING = ("pingpong", "fenced", "pingpong+overlap")
OVERLAPPING = ("overlap", "pingpong+overlap")
FORWARD_SCHEDULE = "pingpong"
# True: under causality the forward's and the dQ kernel's programs take their query blocks
# last to first. A GPU starts a grid's programs in index order, so the ones that see the most
# keys then start first and the last wave holds the lightest (FlashAttention-3's "longest
# processing time first" order); the dK/dV kernel's first key blocks are already its
# heaviest. On an H200 (stop 23, bf16, causal, T=8192, forward+backward) it ran 1.04× as
# fast at head dim 64 (341 against 327 TFLOP/s) and 1.05× at 128 (373 against 356).
HEAVIEST_FIRST = True
# True: the forward frees a slot's keys as soon as q·kᵀ has read them, through a barrier of
# their own, and the rest of the slot (the key rows, the values) after p·v, as jax's
# FlashAttention-3 example does; False: one barrier frees the whole slot after p·v. With two
# slots the memory warpgroup then starts a block's keys while the block two steps before it
# is still in its softmax and p·v, not after, so they have half a step more to land. Not yet
# timed on a GPU.
EARLY_KEY_RELEASE = False


def forward_warpgroups(head_dim: int) -> int:
    """The forward's compute warpgroups at this head dim (FORWARD_WARPGROUPS)."""
    warpgroups = FORWARD_WARPGROUPS.get(head_dim, COMPUTE_WARPGROUPS)
    if head_dim not in WARPGROUP_HEAD_DIMS.get(warpgroups, ()):
        valid = [count for count, dims in WARPGROUP_HEAD_DIMS.items() if head_dim in dims]
        raise ValueError(f"FORWARD_WARPGROUPS[{head_dim}] = {warpgroups!r}: at head dim "
                         f"{head_dim} the forward runs {valid} compute warpgroups")
    return warpgroups


def forward_schedule(warpgroups: int, causal: bool, q_len: int, k_len: int) -> str:
    """The schedule the forward runs (FORWARD_SCHEDULE, where these warpgroups and lengths
    take it; see SCHEDULES)."""
    schedule = FORWARD_SCHEDULE
    if schedule not in SCHEDULES:
        raise ValueError(f"FORWARD_SCHEDULE = {schedule!r}: choose one of {SCHEDULES}")
    if warpgroups != 2:
        schedule = {"pingpong": "plain", "fenced": "plain",
                    "pingpong+overlap": "overlap"}.get(schedule, schedule)
    if causal and q_len > k_len:  # a query block may see no key: no first block to start from
        schedule = {"overlap": "plain", "pingpong+overlap": "pingpong"}.get(schedule, schedule)
    return schedule


def smem_bytes(head_dim: int, block_kv: int, stages: int, itemsize: int = 2,
               warpgroups: int = COMPUTE_WARPGROUPS) -> int:
    """About the shared memory one forward program holds (the buffers; barriers are a few
    bytes)."""
    tiles = (warpgroups * BLOCK_Q + 2 * stages * block_kv) * head_dim * itemsize
    vectors = stages * KEY_ROWS * block_kv + warpgroups * (head_dim + 2 * BLOCK_Q)
    return tiles + 4 * vectors


SMEM_BUDGET = 227 * 1024  # what an H100 lets one block hold


def unsupported(q, k, block_kv: int = FORWARD_BLOCK_K, stages: int = 2) -> str | None:
    """Why the Mosaic GPU kernels cannot take these inputs (block_kv keys per forward step,
    `stages` ring slots), or None if they can."""
    d = q.shape[-1]
    if not available():
        return f"Mosaic GPU kernels need jax ≥ 0.11, this is {jax.__version__}"
    if q.dtype not in (jnp.bfloat16, jnp.float16) or k.dtype != q.dtype:
        return (f"the Mosaic GPU kernels take bfloat16 or float16 q and k, got {q.dtype} and "
                f"{k.dtype}")
    if d not in (64, 128):  # the dK/dV kernel holds two [64, d] float32 accumulators
        return f"the Mosaic GPU kernels take head dim 64 or 128, got {d}"
    if block_kv % 64 or block_kv > 256:
        return f"block_kv must be a multiple of 64 up to 256, got {block_kv}"
    if stages < 2:
        return f"stages must be at least 2, got {stages}"
    needs = smem_bytes(d, block_kv, stages, warpgroups=forward_warpgroups(d))
    if needs > SMEM_BUDGET:
        return (f"block_kv {block_kv} with {stages} stages at head dim {d} needs "
                f"{needs // 1024} KiB of shared memory, over {SMEM_BUDGET // 1024} KiB")
    return None


def hopper() -> bool:
    """Whether the GPU the kernels are built for is a Hopper (sm_90): the device JAX runs on,
    or under dispatch.target("gpu") the abstract H100 it lowers for."""
    if dispatch.backend() != "gpu":
        return False
    if jax.default_backend() != "gpu":
        return dispatch.ABSTRACT_GPU.startswith("NVIDIA H")
    return getattr(jax.devices()[0], "compute_capability", None) == "9.0"


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


def logit_constant(normalizer: str, sm_scale: float) -> float:
    """The logit scale and, for softmax, log2 e (the kernels' exponentials are exp2)."""
    return sm_scale * (LOG2_E if normalizer == "softmax" else 1.0)


def logit_gain(d: int, q_scale, k_scale, *, qk_norm: str | None, normalizer: str,
               sm_scale: float):
    """[d] float32: everything that multiplies a logit along head_dim, folded into the q side
    under a norm: both norms' gains and `logit_constant`."""
    gain = jnp.full((d,), logit_constant(normalizer, sm_scale), jnp.float32)
    if qk_norm is not None:
        for scale in (q_scale, k_scale):
            if scale is not None:
                gain = gain * scale.astype(jnp.float32)
    return gain


def forward(q, k, v, q_scale, k_scale, key_mask=None, row_scale=None, *,
            qk_norm: str | None, normalizer: str, causal: bool, sm_scale: float, eps: float,
            block_kv: int = FORWARD_BLOCK_K, stages: int = 2, interpret: bool = False):
    """q [b, t, h, d], k and v [b, s, h_kv, d] (16-bit), gains [d] or None, key_mask [b, s]
    (True: the key may be seen) or None, row_scale [b, t] (a factor on each query's logits,
    e.g. LSSA's length scale) or None -> (o [b, t, h, d], statistic [b, h, t] float32)."""
    b, t, h, d = q.shape
    w = forward_warpgroups(d)
    schedule = forward_schedule(w, causal, t, k.shape[1])
    g = geometry(q, k, qk_norm=qk_norm, normalizer=normalizer, causal=causal,
                 sm_scale=sm_scale, eps=eps, block_k=block_kv, stages=stages,
                 key_masked=key_mask is not None)
    gain = logit_gain(d, q_scale, k_scale, qk_norm=qk_norm, normalizer=normalizer,
                      sm_scale=sm_scale)
    q = pad_rows(q, w * BLOCK_Q)
    tq = q.shape[1]
    row_scale = padded_row_scale(row_scale, b, t, tq)
    k_p, v = pad_rows(k, block_kv), pad_rows(v, block_kv)
    stats = key_rows(*key_stats(k, qk_norm, eps), key_mask, k_p.shape[1])
    scratch = (
        plgpu.SMEM((w, BLOCK_Q, d), q.dtype, transforms=tiled(d, q.dtype)),
        plgpu.SMEM((stages, block_kv, d), k.dtype, transforms=tiled(d, k.dtype)),
        plgpu.SMEM((stages, block_kv, d), v.dtype, transforms=tiled(d, v.dtype)),
        plgpu.SMEM((stages, KEY_ROWS, block_kv), jnp.float32),                     # key rows
        plgpu.SMEM((w, d), jnp.float32),                                            # gain
        plgpu.SMEM((w, BLOCK_Q), jnp.float32),                                      # row scale
        plgpu.SMEM((w, BLOCK_Q), jnp.float32),                                      # statistic
        staging(block_kv, q.dtype, interpret, w),
    )
    barriers = (plgpu.Barrier(num_barriers=w),     # q, gain, row scale landed
                *ring_barriers(3, stages, w),      # k, its rows, v; free
                # the keys' own free barrier (EARLY_KEY_RELEASE)
                plgpu.Barrier(num_arrivals=w, num_barriers=stages) if EARLY_KEY_RELEASE
                else None,
                # the turns: each compute warpgroup arrives, then waits for the other
                plgpu.Barrier(num_arrivals=w) if schedule in TURN_TAKING else None)

    def entry(q_ref, k_ref, v_ref, stats_ref, gain_ref, rscale_ref, o_ref, stat_ref):
        pl.run_scoped(lambda smem, bars: _forward_program(
            g, w, schedule, q_ref, k_ref, v_ref, stats_ref, gain_ref, rscale_ref, o_ref, stat_ref,
            *smem, *bars), scratch, barriers, collective_axes="wg")

    o, stat = launch(entry, (jax.ShapeDtypeStruct(q.shape, q.dtype),
                             jax.ShapeDtypeStruct((b, h, tq), jnp.float32)),
                     (h, tq // (w * BLOCK_Q), b), interpret, w)(q, k_p, v, stats, gain,
                                                                row_scale)
    return o[:, :t], stat[:, :, :t]


def geometry(q, k, *, qk_norm, normalizer, causal, sm_scale, eps, block_k, stages,
             key_masked):
    """pallas.py's Geometry for these inputs: block_k keys per step, num_stages ring slots,
    key_masked when a key mask comes in (then every tile is masked)."""
    return Geometry(block_q=BLOCK_Q, block_k=block_k, q_len=q.shape[1], k_len=k.shape[1],
                    group=q.shape[2] // k.shape[2], causal=causal, normalizer=normalizer,
                    qk_norm=qk_norm, sm_scale=sm_scale, eps=eps, num_stages=stages,
                    key_masked=key_masked)


def key_rows(rstd, shift, key_mask, padded_len: int):
    """[b, h_kv, KEY_ROWS, padded_len] float32: the per-key values the kernels stream, zero
    (unseen) for padding keys."""
    valid = jnp.ones(rstd.shape, jnp.float32)
    if key_mask is not None:
        valid = jnp.broadcast_to(key_mask.astype(jnp.float32)[:, None], rstd.shape)
    table = jnp.stack([rstd, shift, valid], axis=2)
    return jnp.pad(table, ((0, 0),) * 3 + ((0, padded_len - rstd.shape[-1]),))


def padded_row_scale(row_scale, b: int, t: int, padded_len: int):
    """[b, padded_len] float32 logit factors per query, 1 where none is given."""
    if row_scale is None:
        return jnp.ones((b, padded_len), jnp.float32)
    return jnp.pad(row_scale.astype(jnp.float32), ((0, 0), (0, padded_len - t)),
                   constant_values=1.0)


def pad_rows(x, multiple: int):
    """x [b, n, ...] with zero rows appended up to a multiple of `multiple`."""
    extra = -x.shape[1] % multiple
    return jnp.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))


def launch(entry, out_type, grid, interpret: bool, warpgroups: int = COMPUTE_WARPGROUPS):
    """entry as a Mosaic GPU kernel of `warpgroups` compute warpgroups and a memory one over
    grid (query heads, row blocks, batch); interpreted on request."""
    params = dict(interpret=plgpu.InterpretGPUParams()) if interpret else dict(
        compiler_params=plgpu.CompilerParams(approx_math=True))
    return plgpu.kernel(entry, out_type=out_type, grid=grid,
                        grid_names=("heads", "blocks", "batch"),
                        num_threads=warpgroups + 1, thread_name="wg", **params)


def tiled(row_length: int, dtype):
    """SMEM transforms for wgmma operands whose rows hold `row_length` values: 8-row tiles,
    swizzled by the widest pattern the row fits."""
    swizzle = plgpu.find_swizzle(row_length * jnp.dtype(dtype).itemsize * 8)
    return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
            plgpu.SwizzleTransform(swizzle))


def staging(columns: int, dtype, interpret: bool, warpgroups: int = COMPUTE_WARPGROUPS):
    """SMEM for the interpreter's register-operand products (see `accumulate`), else None."""
    if not interpret:
        return None
    return plgpu.SMEM((warpgroups, BLOCK_Q, columns), dtype,
                      transforms=tiled(columns, dtype))


def ring_barriers(sources: int, stages: int, warpgroups: int = COMPUTE_WARPGROUPS):
    """A "ready" barrier per source and slot (each copy arrives once, with its bytes), then
    one "free" barrier per slot that every compute warpgroup arrives at."""
    return (*(plgpu.Barrier(num_barriers=stages) for _ in range(sources)),
            plgpu.Barrier(num_arrivals=warpgroups, num_barriers=stages))


def produce(sources, free, lo, hi, stages: int, total: int):
    """The memory warpgroup's loop: block j in [lo, hi) of every source goes into slot
    (j − lo) mod stages once the compute warpgroups have freed it. sources: (block j's GMEM
    view as a function of j, SMEM ring, ready barriers), `total` blocks each; free: the free
    barriers, one for all sources or a tuple of one per source (`free_groups`). Ends by
    observing the last blocks' release too, so that every barrier phase is waited on."""
    groups = free_groups(sources, free)

    def load(j, wait: bool):
        slot = lax.rem(j - lo, stages)
        for barrier, members in groups:
            if wait:
                plgpu.barrier_wait(barrier.at[slot])
            for view, ring, ready in members:
                plgpu.copy_gmem_to_smem(view(j), ring.at[slot], ready.at[slot])

    for i in range(stages):
        if isinstance(lo, int) and lo + i >= total:
            break  # a static index past the end fails at trace time, even under pl.when
        pl.when(lo + i < hi)(functools.partial(load, lo + i, False))

    lax.fori_loop(lo + stages, hi, lambda j, _: load(j, True), None)

    def drain(j, _):
        for barrier, _members in groups:
            plgpu.barrier_wait(barrier.at[lax.rem(j - lo, stages)])
    lax.fori_loop(jnp.maximum(hi, lo + stages), hi + stages, drain, None)


def free_groups(sources, free):
    """[(free barrier, the sources it frees)] in the sources' order: `free` one barrier for
    all, or a tuple of one per source, where neighbours that share a barrier form one group
    (each barrier phase is waited on once)."""
    barriers = free if isinstance(free, tuple) else (free,) * len(sources)
    if len(barriers) != len(sources):
        raise ValueError(f"{len(barriers)} free barriers for {len(sources)} sources")
    groups = []
    for barrier, source in zip(barriers, sources):
        if groups and groups[-1][0] is barrier:
            groups[-1][1].append(source)
        else:
            groups.append((barrier, [source]))
    if len({id(barrier) for barrier, _ in groups}) != len(groups):
        raise ValueError("the sources that share a free barrier must be neighbours")
    return groups


def program_axes(warpgroups: int = COMPUTE_WARPGROUPS, reverse: bool = False):
    """(batch, query head, warpgroup, first of the program's rows, BLOCK_Q per compute
    warpgroup); with `reverse` the first program takes the last rows (see HEAVIEST_FIRST)."""
    block = lax.axis_index("blocks")
    if reverse:
        block = lax.axis_size("blocks") - 1 - block
    return (lax.axis_index("batch"), lax.axis_index("heads"), lax.axis_index("wg"),
            block * warpgroups * BLOCK_Q)


def copy_in(pairs, barrier):
    """Copy (GMEM view, SMEM ref) pairs in turn through one barrier, waiting for each: a
    barrier phase counts one copy's bytes."""
    for src, dst in pairs:
        plgpu.copy_gmem_to_smem(src, dst, barrier)
        plgpu.barrier_wait(barrier)


def release(readies, free, lo, stages: int, schedule=None):
    """A fori_loop body that hands back, unread, a block this warpgroup does not need (free:
    its free barrier, or a tuple of them); with a `schedule` barrier it also takes the step's
    two turns (see `take_turn`)."""
    frees = free if isinstance(free, tuple) else (free,)

    def body(j, _):
        slot = lax.rem(j - lo, stages)
        for ready in readies:
            plgpu.barrier_wait(ready.at[slot])
        for barrier in frees:
            plgpu.barrier_arrive(barrier.at[slot])
        if schedule is not None:
            take_turn(schedule)
            take_turn(schedule)
    return body


def take_turn(schedule):
    """Meet the other compute warpgroup at the schedule barrier. Each forward step meets it
    twice (after issuing q·kᵀ, before p·v) and warpgroup 1 once more at the start, so one
    warpgroup's softmax falls between the other's products."""
    plgpu.barrier_arrive(schedule)
    plgpu.barrier_wait(schedule)


def product(a, b, shape, while_running=None):
    """a @ b into a fresh float32 accumulator of `shape`; a and b SMEM refs (b may be a
    transposed view). while_running() runs after the product is issued, before its wait."""
    return products([(a, b)], shape, while_running)


def products(pairs, shape, while_running=None):
    """Σ a @ b over (a, b) SMEM ref pairs, into one fresh float32 accumulator of `shape`
    (see `product`)."""
    def run(acc_ref):
        for a, b in pairs:
            plgpu.wgmma(acc_ref, a, b)
        if while_running is not None:
            while_running()
        return acc_ref[...]
    return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))


def separate_products(pairs, shape):
    """[a @ b for (a, b) in pairs], each into a fresh float32 accumulator of `shape`: issued
    back to back and waited for once, so the tensor cores run them without a pause between."""
    def run(acc_refs):
        for acc_ref, (a, b) in zip(acc_refs, pairs):
            plgpu.wgmma(acc_ref, a, b)
        return [acc_ref[...] for acc_ref in acc_refs]
    return pl.run_scoped(run, [plgpu.ACC(shape, jnp.float32) for _ in pairs])


def accumulate_all(accs, lhs, rhs, p_smem):
    """[acc + a @ b for acc, a, b in zip(accs, lhs, rhs)], the a in registers. Compiled
    (p_smem None), the wgmmas read a from registers and add into the accumulators', issued
    back to back and waited for once. Mosaic GPU's interpreter takes neither a register
    operand nor an initialized accumulator (`run_state`), so there each a goes through SMEM
    and each product into a fresh accumulator plus an add, one after another: the same sums."""
    if p_smem is not None:
        sums = []
        for acc, a, b in zip(accs, lhs, rhs):
            p_smem[...] = a
            plgpu.commit_smem()
            sums.append(acc + product(p_smem, b, acc.shape))
        return sums

    def run(acc_refs):
        for acc_ref, a, b in zip(acc_refs, lhs, rhs):
            plgpu.wgmma(acc_ref, a, b)
    accs = pl.run_state(run)([plgpu.ACC.init(acc) for acc in accs])
    plgpu.wgmma_wait(0)
    return accs


def accumulate(acc, p, b_tile, p_smem):
    """acc + p @ b_tile, p in registers (see `accumulate_all`)."""
    return accumulate_all([acc], [p], [b_tile], p_smem)[0]


def rows(x, shape):
    """A per-row vector broadcast along a tile's columns."""
    return lax.broadcast_in_dim(x, shape, [0])


def cols(x, shape):
    """A per-column vector broadcast along a tile's rows."""
    return lax.broadcast_in_dim(x, shape, [1])


def load_vector(ref, per_row: bool):
    """A float32 vector from SMEM, laid out to index the rows (or the columns) of a tile."""
    return plgpu.load(ref, layout=plgpu.Layout.WGMMA.reduce(1 if per_row else 0))


def visible(g, shape, q_first, k_first, keys_on_rows: bool = False, valid=None):
    """[shape] booleans of a score tile whose first query is q_first and first key k_first:
    the key exists (below the unpadded length), is not masked (`valid`, a vector of the
    tile's keys, > 0 where seen) and, under causality, the query sees it."""
    row = plgpu.broadcasted_iota(jnp.int32, shape, 0, layout=plgpu.Layout.WGMMA)
    col = plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=plgpu.Layout.WGMMA)
    q_pos, k_pos = (col + q_first, row + k_first) if keys_on_rows else (row + q_first,
                                                                         col + k_first)
    seen = k_pos < g.k_len
    if valid is not None:
        seen = seen & ((rows if keys_on_rows else cols)(valid, shape) > 0)
    if g.causal:
        seen = seen & (q_pos + (g.k_len - g.q_len) >= k_pos)
    return seen


def softplus(x):
    """max(x, 0) + log(1 + exp(−|x|)). jax.nn.softplus is a custom_jvp, which Mosaic GPU's
    lowering refuses ("Resource estimation does not support custom_jvp_call")."""
    return jnp.maximum(x, 0.0) + jnp.log(1.0 + jnp.exp(-jnp.abs(x)))


def key_blocks(g, q_first):
    """(key blocks every query of rows [q_first, q_first + BLOCK_Q) sees whole, key blocks
    any of them sees), blocks of g.block_k keys."""
    total = -(-g.k_len // g.block_k)
    # a ragged last block needs the length mask, and with a key mask every block needs it
    whole = 0 if g.key_masked else g.k_len // g.block_k
    if not g.causal:
        return whole, total
    offset = g.k_len - g.q_len
    whole_causal = jnp.clip((q_first + offset + 1) // g.block_k, 0, whole)
    seen = jnp.clip((q_first + BLOCK_Q - 1 + offset) // g.block_k + 1, 0, total)
    return jnp.minimum(whole_causal, seen), seen


def _forward_program(g, w, schedule, q_ref, k_ref, v_ref, stats_ref, gain_ref, rscale_ref,
                     o_ref, stat_ref, q_smem, k_smem, v_smem, kstat_smem, gain_smem,
                     rscale_smem, stat_smem, p_smem, q_ready, k_ready, kstat_ready, v_ready,
                     free, key_free, turns):
    """w compute warpgroups of BLOCK_Q queries each, and the memory warpgroup that feeds them
    key blocks; `schedule` one of SCHEDULES, `turns` its barrier or None, `key_free` the
    keys' own free barrier (EARLY_KEY_RELEASE) or None."""
    frees = free if key_free is None else (key_free, free)
    batch, head, wg, program_first = program_axes(w, reverse=g.causal and HEAVIEST_FIRST)
    # The memory warpgroup serves the last compute warpgroup, which sees the most keys.
    _, steps = key_blocks(g, program_first + (w - 1) * BLOCK_Q)
    compute_registers, memory_registers = REGISTERS[w]

    @pl.when(wg < w)
    def _compute():
        plgpu.set_max_registers(compute_registers, action="increase")
        q_first = program_first + wg * BLOCK_Q
        q_tile = q_smem.at[wg]
        if turns is not None:
            pl.when(wg == 1)(lambda: take_turn(turns))
        copy_in([(q_ref.at[batch, pl.ds(q_first, BLOCK_Q), head], q_tile),
                 (gain_ref, gain_smem.at[wg]),
                 (rscale_ref.at[batch, pl.ds(q_first, BLOCK_Q)], rscale_smem.at[wg])],
                q_ready.at[wg])
        query_values = _prepare_queries(g, q_tile, gain_smem.at[wg], rscale_smem.at[wg])
        whole, seen = key_blocks(g, q_first)
        per_row = plgpu.Layout.WGMMA.reduce(1)
        carry = (plgpu.layout_cast(jnp.full((BLOCK_Q,), NEG, jnp.float32), per_row),  # max
                 plgpu.layout_cast(jnp.zeros((BLOCK_Q,), jnp.float32), per_row),       # sum
                 plgpu.layout_cast(jnp.zeros(q_tile.shape, jnp.float32), plgpu.Layout.WGMMA))
        blocks = KeyBlocks(g, q_tile, k_smem, v_smem, kstat_smem, k_ready, kstat_ready,
                           v_ready, free, key_free, q_first, query_values,
                           None if p_smem is None else p_smem.at[wg])
        if schedule in OVERLAPPING:
            m, l, acc = _overlapped_blocks(blocks, turns, whole, seen, carry)
        else:
            step = functools.partial(_forward_step, blocks, turns, schedule == "fenced")
            carry = lax.fori_loop(0, whole, functools.partial(step, masked=False), carry)
            m, l, acc = lax.fori_loop(whole, seen, functools.partial(step, masked=True), carry)
        lax.fori_loop(seen, steps, release((k_ready, kstat_ready, v_ready), frees, 0,
                                           g.num_stages, turns), None)
        if turns is not None:
            pl.when(wg == 0)(lambda: take_turn(turns))  # as many turns as warpgroup 1
        seen_any = l > 0
        inv = jnp.where(seen_any, 1.0 / jnp.where(seen_any, l, 1.0), 0.0)
        q_tile[...] = (acc * rows(inv, acc.shape)).astype(q_tile.dtype)
        if g.normalizer == "softmax":
            stat = jnp.where(seen_any, m + jnp.log(jnp.where(seen_any, l, 1.0)) * LOG2_E,
                             jnp.inf)
        else:
            stat = l
        stat_smem[wg] = stat
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_tile, o_ref.at[batch, pl.ds(q_first, BLOCK_Q), head])
        plgpu.copy_smem_to_gmem(stat_smem.at[wg],
                                stat_ref.at[batch, head, pl.ds(q_first, BLOCK_Q)])
        plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == w)
    def _memory():
        plgpu.set_max_registers(memory_registers, action="decrease")
        kv_head = lax.div(head, jnp.int32(g.group))
        keys = lambda j: (batch, pl.ds(j * g.block_k, g.block_k), kv_head)
        produce([(lambda j: k_ref.at[keys(j)], k_smem, k_ready),
                 (lambda j: stats_ref.at[batch, kv_head, :, pl.ds(j * g.block_k, g.block_k)],
                  kstat_smem, kstat_ready),
                 (lambda j: v_ref.at[keys(j)], v_smem, v_ready)],
                free if key_free is None else (key_free, free, free), 0, steps, g.num_stages,
                k_ref.shape[1] // g.block_k)


def _prepare_queries(g, q_tile, gain_smem, rscale_smem):
    """Normalize the q tile in place and fold the gain and each row's logit factor into it;
    returns Σ_d q' per row for LayerNorm's mean correction (None for RMSNorm). Without a norm
    the tile stays and the logit factors f_i come back, for the scores."""
    if g.qk_norm is None:
        return (load_vector(rscale_smem, per_row=True)
                * logit_constant(g.normalizer, g.sm_scale))
    x = q_tile[...].astype(jnp.float32)
    d = x.shape[-1]
    if g.qk_norm == "layer":
        x = x - rows(x.sum(axis=1) / d, x.shape)
    if g.qk_norm is not None:
        x = x * rows(lax.rsqrt((x * x).sum(axis=1) / d + g.eps), x.shape)
    x = x * rows(load_vector(rscale_smem, per_row=True), x.shape)
    q = (x * cols(load_vector(gain_smem, per_row=False), x.shape)).astype(q_tile.dtype)
    q_tile[...] = q
    plgpu.commit_smem()
    return q.astype(jnp.float32).sum(axis=1) if g.qk_norm == "layer" else None


def normed_scores(g, a, key_stats_slot, query_values, keys_on_rows: bool = False):
    """Scores from the raw product a = q'·k: times each key's rstd, minus rstd·μ·Σq' for
    LayerNorm (query_values: Σ_d q'); without a norm, times each query's logit factor
    (query_values: f). key_stats_slot the [KEY_ROWS, block] SMEM slot of key rows."""
    per_key = rows if keys_on_rows else cols
    per_query = cols if keys_on_rows else rows
    if g.qk_norm is None:
        return a * per_query(query_values, a.shape)
    s = a * per_key(load_vector(key_stats_slot.at[0], per_row=keys_on_rows), a.shape)
    if g.qk_norm == "layer":
        shift = load_vector(key_stats_slot.at[1], per_row=keys_on_rows)
        s = s - per_query(query_values, a.shape) * per_key(shift, a.shape)
    return s


class KeyBlocks(NamedTuple):
    """What a compute warpgroup's forward steps read: its q tile, the ring of key blocks
    (SMEM slots and their barriers; key_free the keys' own free barrier or None), where its
    queries start, the per-query values of `_prepare_queries` and the interpreter's staging
    tile (None compiled)."""
    g: Any
    q_tile: Any
    k_smem: Any
    v_smem: Any
    kstat_smem: Any
    k_ready: Any
    kstat_ready: Any
    v_ready: Any
    free: Any
    key_free: Any
    q_first: Any
    query_values: Any
    p_smem: Any

    def scores(self, j, while_running=None, then=None):
        """Block j's raw q·kᵀ tile, its keys' wait included; while_running as in `product`.
        With `then`, what then(acc_ref) returns instead: it runs once the product is issued
        and reads it itself (`plgpu.wgmma_accumulator_load`), then frees the keys itself
        (`keys_read`)."""
        slot = lax.rem(j, self.g.num_stages)
        plgpu.barrier_wait(self.k_ready.at[slot])
        plgpu.barrier_wait(self.kstat_ready.at[slot])
        keys, shape = self.k_smem.at[slot].transpose((1, 0)), (BLOCK_Q, self.g.block_k)
        if then is None:
            a = product(self.q_tile, keys, shape, while_running)
            self.keys_read(j)
            return a

        def run(acc_ref):
            plgpu.wgmma(acc_ref, self.q_tile, keys)
            return then(acc_ref)
        return pl.run_scoped(run, plgpu.ACC(shape, jnp.float32))

    def keys_read(self, j):
        """Block j's q·kᵀ has ended: free its keys' part of the slot, if that part has a
        barrier of its own (EARLY_KEY_RELEASE)."""
        if self.key_free is not None:
            plgpu.barrier_arrive(self.key_free.at[lax.rem(j, self.g.num_stages)])

    def weights(self, j, a, m, l, masked: bool):
        """Block j's weights from its raw product a, given the running max m and sum l ->
        (m, l, alpha, p float32): alpha rescales the running output (None for softplus)."""
        g, slot = self.g, lax.rem(j, self.g.num_stages)
        s = normed_scores(g, a, self.kstat_smem.at[slot], self.query_values)
        if masked:
            valid = (load_vector(self.kstat_smem.at[slot, 2], per_row=False)
                     if g.key_masked else None)
            seen = visible(g, s.shape, self.q_first, j * g.block_k, valid=valid)
        keep = (lambda x: jnp.where(seen, x, 0.0)) if masked else (lambda x: x)
        if g.normalizer == "softplus":
            p = keep(softplus(s))
            return m, l + p.sum(axis=1), None, p
        if masked:
            s = jnp.where(seen, s, NEG)
        m_new = jnp.maximum(m, s.max(axis=1))
        alpha = jnp.exp2(m - m_new)
        p = keep(jnp.exp2(s - rows(m_new, s.shape)))
        return m_new, l * alpha + p.sum(axis=1), alpha, p


def _forward_step(blocks, turns, fenced: bool, j, carry, *, masked: bool):
    """Key block j under "plain", "pingpong" or "fenced": its scores, softmax and p·v in
    turn; `turns` the ping-pong barrier or None, `fenced` the optimization barrier."""
    m, l, acc = carry
    slot = lax.rem(j, blocks.g.num_stages)
    a = blocks.scores(j, None if turns is None else functools.partial(take_turn, turns))
    m, l, alpha, p = blocks.weights(j, a, m, l, masked)
    if alpha is not None:
        acc = acc * rows(alpha, acc.shape)
    if fenced:  # the softmax ends here, before the turn passes
        m, l, acc, p = lax.optimization_barrier((m, l, acc, p.astype(blocks.q_tile.dtype)))
    if turns is not None:  # this softmax is done; wait for the other's to end
        plgpu.barrier_arrive(turns)
    plgpu.barrier_wait(blocks.v_ready.at[slot])
    if turns is not None:
        plgpu.barrier_wait(turns)
    acc = accumulate(acc, p.astype(blocks.q_tile.dtype), blocks.v_smem.at[slot],
                     blocks.p_smem)
    plgpu.barrier_arrive(blocks.free.at[slot])
    return m, l, acc


def _overlapped_blocks(blocks, turns, whole, seen, carry):
    """The overlapping schedules over key blocks [0, seen), seen ≥ 1; blocks below `whole`
    need no mask -> (m, l, acc). Block 0's softmax runs alone; each later block's runs while
    the block before it is multiplied into the output (`_overlapped_step`); the last block's
    product runs alone. With `turns` (the ping-pong barrier) each block takes its two turns:
    after its products are issued, and once its softmax is done and its slot handed back. The
    second waits for p·v so that the slot is free before the turn passes: the other
    warpgroup, half a step behind, would otherwise hold the slot this one's next keys need."""
    take = (lambda: take_turn(turns)) if turns is not None else (lambda: None)
    m, l, acc = carry
    m, l, _, p = blocks.weights(0, blocks.scores(0, take), m, l, masked=True)
    take()
    carry = m, l, acc, p.astype(blocks.q_tile.dtype)
    step = functools.partial(_overlapped_step, blocks, take)
    # step j takes block j + 1's softmax: unmasked while j + 1 < whole
    carry = lax.fori_loop(0, whole - 1, functools.partial(step, masked=False), carry)
    m, l, acc, p = lax.fori_loop(jnp.maximum(whole - 1, 0), seen - 1,
                                 functools.partial(step, masked=True), carry)
    last = lax.rem(seen - 1, blocks.g.num_stages)
    plgpu.barrier_wait(blocks.v_ready.at[last])
    acc = accumulate(acc, p, blocks.v_smem.at[last], blocks.p_smem)
    plgpu.barrier_arrive(blocks.free.at[last])
    return m, l, acc


def _overlapped_step(blocks, take, j, carry, *, masked: bool):
    """Block j + 1's softmax while block j's p·v runs: issue j + 1's q·kᵀ, then j's p·v,
    read the scores once they land (wgmma groups finish in the order issued) and run the
    softmax before waiting for p·v; then rescale the output. The softmax sits inside p·v's
    `run_state`, whose end waits for every product in flight, so its results leave through
    refs. In the interpreter, which holds no product in flight (see `accumulate`), the same
    sums run one after the other. take() takes a turn (see `_overlapped_blocks`)."""
    m, l, acc, p = carry
    slot = lax.rem(j, blocks.g.num_stages)
    values = blocks.v_smem.at[slot]
    if blocks.p_smem is not None:
        a = blocks.scores(j + 1)
        plgpu.barrier_wait(blocks.v_ready.at[slot])
        acc = accumulate(acc, p, values, blocks.p_smem)
        take()
        m_new, l, _, p = blocks.weights(j + 1, a, m, l, masked)
    else:
        def under_product(scores_ref):
            plgpu.barrier_wait(blocks.v_ready.at[slot])

            def multiply_then_softmax(refs):
                acc_ref, m_ref, l_ref, p_ref = refs
                plgpu.wgmma(acc_ref, p, values)
                take()
                a = plgpu.wgmma_accumulator_load(scores_ref, wait_n=1)
                blocks.keys_read(j + 1)
                m_ref[...], l_ref[...], _, p_next = blocks.weights(j + 1, a, m, l, masked)
                p_ref[...] = p_next.astype(p.dtype)
            return pl.run_state(multiply_then_softmax)((plgpu.ACC.init(acc), m, l, p))
        acc, m_new, l, p = blocks.scores(j + 1, then=under_product)
    plgpu.barrier_arrive(blocks.free.at[slot])
    take()
    if blocks.g.normalizer == "softmax":  # the softmax's alpha: the output's rescaling
        acc = acc * rows(jnp.exp2(m - m_new), acc.shape)
    return m_new, l, acc, p.astype(blocks.q_tile.dtype)
