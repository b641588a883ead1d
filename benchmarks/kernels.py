"""Kernel benchmark: fused norm-attention, fused norms and chunked linear attention against
cuDNN/XLA, interleaved in one process.

    python benchmarks/kernels.py              # on a GPU: the table for benchmarks/RESULTS.md
    python benchmarks/kernels.py --smoke      # anywhere: tiny shapes, kernels interpreted

Attention FLOPs count 4·B·H·T²·D forward (two matmuls), 2.5× that for the backward, halved
for causal attention. Norm bandwidth counts one read and one write of x (plus the residual).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from unittest import mock

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks import timing  # noqa: E402
from jaxlab.kernels.fused_norm import fused_norm  # noqa: E402
from jaxlab.kernels.fused_norm.api import block_rows_for  # noqa: E402
from jaxlab.kernels.linear_attention import chunked_linear_attention  # noqa: E402
from jaxlab.kernels.norm_attention import fused_norm_attention  # noqa: E402
from jaxlab.kernels.norm_attention import cudnn as norm_cudnn  # noqa: E402
from jaxlab.kernels.norm_attention import mosaic_backward, mosaic_gpu  # noqa: E402
from jaxlab.kernels.norm_attention.reference import head_norm  # noqa: E402


def attention_candidates(q, k, v, scale, kernel_impl: str, causal: bool = True, tiles=None,
                         mosaic_tiles=None, on_gpu: bool | None = None):
    """tiles: keyword arguments of fused_norm_attention that set the Triton launch (blocks,
    warps, stages), e.g. the sweep's best; mosaic_tiles: the Mosaic GPU forward's (block_k,
    num_stages); None for the defaults. on_gpu (default: whether jax runs on one) adds the
    GPU-only candidates."""
    def ours(q, k, v):  # the Triton-lowered kernels
        return fused_norm_attention(q, k, v, scale, scale, qk_norm="rms", causal=causal,
                                    impl=kernel_impl, gpu_kernel="triton", **(tiles or {}))

    def xla(q, k, v):
        return fused_norm_attention(q, k, v, scale, scale, qk_norm="rms", causal=causal, impl="xla")

    def cudnn(q, k, v):  # what impl="auto" runs on a GPU
        return norm_cudnn.norm_attention(q, k, v, scale, scale, qk_norm="rms", causal=causal,
                                         sm_scale=None, eps=1e-6)

    def mosaic(q, k, v):  # the Hopper kernels, both passes
        return fused_norm_attention(q, k, v, scale, scale, qk_norm="rms", causal=causal,
                                    impl=kernel_impl, gpu_kernel="mosaic",
                                    **(mosaic_tiles or {}))

    def mosaic_core(q, k, v):  # the same kernels on XLA-normed q, k: what the norms cost them
        qn = head_norm(q, scale, "rms", 1e-6).astype(q.dtype)
        kn = head_norm(k, scale, "rms", 1e-6).astype(k.dtype)
        return fused_norm_attention(qn, kn, v, qk_norm=None, causal=causal, impl=kernel_impl,
                                    gpu_kernel="mosaic", **(mosaic_tiles or {}))

    candidates = {"triton": ours, "xla": xla}
    if jax.default_backend() == "gpu" if on_gpu is None else on_gpu:
        candidates["xla-norm+cudnn"] = cudnn
        if mosaic_gpu.unsupported(q, k) is None:
            candidates["mosaic"] = mosaic
            candidates["xla-norm+mosaic"] = mosaic_core
    return candidates


# The table's ratio rows divide each candidate's rates by this one's: the pair impl="auto"
# runs for plain softmax on a GPU, the goal's yardstick.
RATIO_OF = "xla-norm+cudnn"


CALLS = 1  # calls per timing sample (--calls)


def interleaved(candidates, rounds):
    return timing.interleaved(candidates, rounds, calls=CALLS)


def failure(error: Exception, width: int = 100) -> str:
    """A table cell for a candidate that failed: the error's first line, or its type where it
    has no message (a bare assert)."""
    lines = str(error).splitlines()
    return f"failed: {(lines[0] if lines else type(error).__name__)[:width]}"


SWEEP = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3),
         (128, 32, 4, 3), (64, 128, 4, 2), (128, 128, 8, 2)]


def launch(setting, backward=None):
    """fused_norm_attention's keyword arguments for a (block_q, block_k, warps, stages) setting,
    and another for the backward kernels."""
    bq, bk, warps, stages = setting
    return dict(block_q=bq, block_k=bk, num_warps=warps, num_stages=stages,
                backward_tiles=tuple(backward or setting))


def bench_blocks(b, h, t, d, dtype, kernel_impl, rounds, settings):
    """{setting: (fwd, bwd, fwd+bwd) TFLOP/s or a failure} of the Triton kernel per (block_q,
    block_k, num_warps, num_stages), the same setting in both passes; and the best forward
    and best backward setting."""
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (b, t, h, d), dtype) for kk in keys)
    scale = jnp.ones((d,), jnp.float32)
    flops_fwd = 4 * b * h * t * t * d / 2
    attend = lambda impl, **kw: (lambda q, k, v: fused_norm_attention(
        q, k, v, scale, scale, qk_norm="rms", causal=True, impl=impl, gpu_kernel="triton",
        **kw))
    want = jax.jit(attend("xla"))(q, k, v), fwd_bwd(attend("xla"))(q, k, v)
    results = {}
    for setting in settings:
        fn = attend(kernel_impl, **launch(setting))
        f, g = jax.jit(fn), fwd_bwd(fn)
        try:
            times = interleaved({"fwd": lambda: f(q, k, v), "fwd+bwd": lambda: g(q, k, v)},
                                rounds)
        except Exception as error:  # e.g. a tile too large for shared memory
            results[setting] = failure(error)
            continue
        bwd = max(times["fwd+bwd"] - times["fwd"], 1e-12)
        results[setting] = (flops_fwd / times["fwd"] / 1e12, 2.5 * flops_fwd / bwd / 1e12,
                            3.5 * flops_fwd / times["fwd+bwd"] / 1e12,
                            relative_error((f(q, k, v), g(q, k, v)), want))
    # only settings whose values and gradients match the XLA path to bf16's tolerance
    measured = {s: r for s, r in results.items() if not isinstance(r, str) and r[3] < 2e-2}
    best = lambda part: max(measured, key=lambda s: measured[s][part]) if measured else None
    return results, best(0), best(1)


# Mosaic GPU launch settings: the forward's (keys per step, ring slots, schedule: one of
# mosaic_gpu.SCHEDULES, compute warpgroups: mosaic_gpu.FORWARD_WARPGROUPS, with three the
# turn-taking schedules run "plain"; keys freed after q·kᵀ: mosaic_gpu.EARLY_KEY_RELEASE), the
# backward's (keys per dQ step = queries per dK/dV step, ring slots, how the dK/dV kernel adds
# dQ: a way of mosaic_backward.SHARE_WAYS, "split" for the dQ kernel; independent products
# issued in pairs: mosaic_backward.PAIRED_PRODUCTS). Stop 17's H100 sweeps: forward 128 keys
# best (64 keys ran 7–12% slower and are no longer timed), ping-pong 1.09× at d=64; backward
# 64 × 2, with dQ in dK/dV by "keys" 1.22× at d=64 (0.50× at 128); a backward block of 128
# ran at half the speed. Stop 23's H200 sweep: three slots, three forward warpgroups and the
# dQ shares "columns" and "alternate" no faster than the defaults (those rows are gone). A
# setting a head dim does not take is left out of its rows.
MOSAIC_FORWARD = [(128, 2, "plain", 2, False), (128, 2, "pingpong", 2, False),
                  (128, 2, "fenced", 2, False), (128, 2, "overlap", 2, False),
                  (128, 2, "pingpong+overlap", 2, False), (128, 2, "overlap", 3, False),
                  (128, 2, "pingpong", 2, True), (128, 2, "overlap", 2, True),
                  (128, 2, "pingpong+overlap", 2, True)]
MOSAIC_BACKWARD = [(64, 2, "split", False), (64, 2, "keys", False), (64, 2, "split", True),
                   (64, 2, "keys", True)]
# Settings never yet run on a GPU, timed after all others: if one hangs, the part's time limit
# (gpu_session.sh) ends the sweep having lost only them.
TIMED = {("fwd", (128, 2, "plain", 2, False)), ("fwd", (128, 2, "pingpong", 2, False)),
         ("bwd", (64, 2, "split", False)), ("bwd", (64, 2, "keys", False))}
UNPROVEN = ({("fwd", setting) for setting in MOSAIC_FORWARD}
            | {("bwd", setting) for setting in MOSAIC_BACKWARD}) - TIMED
# The order of the forward's and the dQ kernel's programs (mosaic_gpu.HEAVIEST_FIRST), timed
# as fwd+bwd at the default settings: it changes only which programs start first.
MOSAIC_ORDER = [False, True]


SWEEP_PASSES = ("bwd", "fwd", "order")


def mosaic_sweep_order(d: int, passes=SWEEP_PASSES):
    """bench_mosaic's (pass, setting) rows for head dim d and the passes asked for, in the
    order they are timed: backward settings, forward ones, the program orders, then
    UNPROVEN; settings the head dim does not take (mosaic_backward.SHARE_WAYS,
    mosaic_gpu.WARPGROUP_HEAD_DIMS) are left out."""
    rows = [("bwd", setting) for setting in MOSAIC_BACKWARD
            if d in mosaic_backward.SHARE_WAYS[setting[2]]]
    rows += [("fwd", setting) for setting in MOSAIC_FORWARD
             if d in mosaic_gpu.WARPGROUP_HEAD_DIMS[setting[3]]]
    rows += [("order", heaviest_first) for heaviest_first in MOSAIC_ORDER]
    return sorted((row for row in rows if row[0] in passes), key=lambda row: row in UNPROVEN)


def bench_mosaic(b, h, t, d, dtype, rounds, kernel_impl="pallas", passes=SWEEP_PASSES):
    """Yields ((pass, setting), (TFLOP/s, relative error against the cuDNN path[, speed ÷
    the default's]) or a failure) for the Mosaic GPU kernels as each is measured, in
    mosaic_sweep_order: a backward setting timed as fwd+bwd minus the default forward, a
    forward one forward only, interleaved with the default forward (hence the ratio), a
    program order fwd+bwd."""
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (b, t, h, d), dtype) for kk in keys)
    scale = jnp.ones((d,), jnp.float32)
    flops_fwd = 4 * b * h * t * t * d / 2
    candidates = attention_candidates(q, k, v, scale, kernel_impl)
    reference = candidates.get("xla-norm+cudnn", candidates["xla"])  # the latter off a GPU
    want = jax.jit(reference)(q, k, v), fwd_bwd(reference)(q, k, v)
    attend = lambda block_k=None, stages=2: (lambda q, k, v: fused_norm_attention(
        q, k, v, scale, scale, qk_norm="rms", causal=True, impl=kernel_impl,
        gpu_kernel="mosaic", block_k=block_k, num_stages=stages))
    # The settings are module constants read when a kernel is traced: patch them around it.
    # The default forward is traced here, before any patch, since the rows time it too.
    f = jax.jit(attend())
    jax.block_until_ready(f(q, k, v))
    for part, setting in mosaic_sweep_order(d, passes):
        try:
            if part == "bwd":
                g = fwd_bwd(attend())
                with mosaic_settings({"bwd": setting}, d):
                    times = interleaved({"fwd": lambda: f(q, k, v),
                                         "fwd+bwd": lambda: g(q, k, v)}, rounds)
                bwd = max(times["fwd+bwd"] - times["fwd"], 1e-12)
                cell = 2.5 * flops_fwd / bwd / 1e12, relative_error(g(q, k, v), want[1])
            elif part == "order":
                g = fwd_bwd(attend())
                with mosaic_settings({"order": setting}, d):
                    seconds = interleaved({"fwd+bwd": lambda: g(q, k, v)}, rounds)["fwd+bwd"]
                cell = 3.5 * flops_fwd / seconds / 1e12, relative_error(g(q, k, v), want[1])
            else:
                with mosaic_settings({"fwd": setting}, d) as tiles:
                    forward = jax.jit(attend(tiles["block_k"], tiles["num_stages"]))
                    times = interleaved({"default": lambda: f(q, k, v),
                                         "fwd": lambda: forward(q, k, v)}, rounds)
                cell = (flops_fwd / times["fwd"] / 1e12,
                        relative_error(forward(q, k, v), want[0]),
                        times["default"] / times["fwd"])
        except Exception as error:
            cell = failure(error)
        yield (part, setting), cell


def best_mosaic_settings(rows) -> dict:
    """{"fwd": setting, "bwd": setting, "order": setting}: bench_mosaic's fastest rows per
    part among those that ran and match the cuDNN path to bf16's tolerance."""
    best = {}
    for (part, setting), cell in rows:
        if not isinstance(cell, str) and cell[1] < 2e-2 and cell[0] > best.get(part, (0, 0))[1]:
            best[part] = setting, cell[0]
    return {part: setting for part, (setting, _) in best.items()}


def save_mosaic_settings(path: str, settings: dict) -> None:
    """Write {head dim: best_mosaic_settings} to path as JSON, replacing it whole (a sweep cut
    by its time limit leaves the best of the rows it finished)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({str(d): best for d, best in settings.items()}, f)
    os.replace(tmp, path)


def load_mosaic_settings(path: str) -> dict:
    """save_mosaic_settings' file as {head dim: settings}; {} if there is none."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        # JSON keeps a tuple setting as a list
        return {int(d): {part: tuple(setting) if isinstance(setting, list) else setting
                         for part, setting in best.items()}
                for d, best in json.load(f).items()}


@contextlib.contextmanager
def mosaic_settings(settings: dict, d: int):
    """Run the Mosaic GPU kernels traced inside with bench_mosaic's settings (see
    best_mosaic_settings); yields the forward's launch keywords for attention_candidates."""
    with contextlib.ExitStack() as stack:
        tiles = {}
        if "fwd" in settings:
            # a file of stop 27 or before holds four fields: the keys freed after p·v
            block_k, stages, schedule, warpgroups, early_keys = (*settings["fwd"], False)[:5]
            tiles = dict(block_k=block_k, num_stages=stages)
            stack.enter_context(mock.patch.multiple(
                mosaic_gpu, FORWARD_SCHEDULE=schedule, FORWARD_WARPGROUPS={d: warpgroups},
                EARLY_KEY_RELEASE=early_keys))
        if "order" in settings:
            stack.enter_context(mock.patch.object(mosaic_gpu, "HEAVIEST_FIRST",
                                                  settings["order"]))
        if "bwd" in settings:
            # a file of stop 27 or before holds three fields: the products waited for singly
            block, stages, way, paired = (*settings["bwd"], False)[:4]
            stack.enter_context(mock.patch.multiple(
                mosaic_backward, BLOCK=block, STAGES=stages, DQ_SHARES={d: way},
                PAIRED_PRODUCTS=paired))
        yield tiles


def relative_error(got, want) -> float:
    """The largest over outputs of max |got − want| / max |want| (values, then gradients)."""
    return max(float(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)).max()
                     / jnp.abs(b.astype(jnp.float32)).max())
               for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def fwd_bwd(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def bench_attention(b, h, t, d, dtype, kernel_impl, rounds, tiles=None, only=None,
                    mosaic_tiles=None):
    """Rows of (name, fwd, bwd, fwd+bwd TFLOP/s) per candidate, or (name, a note): every
    candidate's passes interleaved in one timing, so the ratio rows against the cuDNN path
    (RATIO_OF) compare runs that machine noise hit alike; only: the candidate names to time
    (None: all)."""
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (b, t, h, d), dtype) for kk in keys)
    scale = jnp.ones((d,), jnp.float32)
    flops_fwd = 4 * b * h * t * t * d / 2  # causal
    rows, passes, outputs = [], {}, {}
    logits_gib = 4 * b * h * t * t / 2 ** 30
    for name, fn in attention_candidates(q, k, v, scale, kernel_impl, tiles=tiles,
                                         mosaic_tiles=mosaic_tiles).items():
        if only is not None and name not in only:
            continue
        # On an 80 GB H100 the all-XLA fwd+bwd ran out of memory from 8 GiB of logits on
        # (it asked for 34 GiB), after spending the part's time compiling: skip it there.
        if name == "xla" and logits_gib >= 8:
            rows.append((name, f"skipped: its float32 logits alone take {logits_gib:.0f} GiB"))
            continue
        f, g = jax.jit(fn), fwd_bwd(fn)
        try:  # compiled and run once apart, so one that fails (e.g. out of memory) is a row
            outputs[name] = jax.block_until_ready((f(q, k, v), g(q, k, v)))
        except Exception as error:
            rows.append((name, failure(error, 120)))
            continue
        passes[f"{name} fwd"] = functools.partial(f, q, k, v)
        passes[f"{name} fwd+bwd"] = functools.partial(g, q, k, v)
    times = interleaved(passes, rounds) if passes else {}
    rates = {}
    for name in outputs:
        fwd, both = times[f"{name} fwd"], times[f"{name} fwd+bwd"]
        rates[name] = (flops_fwd / fwd / 1e12, 2.5 * flops_fwd / max(both - fwd, 1e-12) / 1e12,
                       3.5 * flops_fwd / both / 1e12)
        rows.append((name, *rates[name]))
    base = RATIO_OF
    ratio_pairs = [(name, base) for name in rates if name != base]
    ratio_pairs += [(name, "xla") for name in ("triton", "mosaic") if name in rates]
    for name, other in ratio_pairs:
        if other in rates:
            ratios = " ".join(f"{mine / theirs:7.2f}x" for mine, theirs in
                              zip(rates[name], rates[other]))
            rows.append((f"{name} / {other}", ratios))
    # the errors against the XLA path, or the cuDNN path where XLA's logits do not fit
    want = "xla" if "xla" in outputs else base
    for name in ("triton", "mosaic", "xla-norm+mosaic"):
        if name in outputs and want in outputs:
            error = relative_error(outputs[name], outputs[want])
            rows.append((f"{name} vs {want}", f"relative error {error:.1e} (values and "
                                              "gradients)"))
    return rows


def example_candidates(causal: bool, kernel_impl: str = "pallas", mosaic_tiles=None):
    """Forward-only candidates for plain softmax attention (no norm, logit scale 1) in float16,
    the dtype jax's example is written for: jax's own FlashAttention-3 kernel in Mosaic GPU
    (jax.experimental.pallas.ops.gpu.attention_mgpu) at each block_kv of its own search, our
    Mosaic GPU forward (mosaic_tiles as in attention_candidates), and cuDNN. Ours against
    jax's tells whether our forward's gap to cuDNN is in our kernel or shared by the best
    Mosaic GPU kernel jax ships. Where this jax has no such example, only ours and cuDNN."""
    candidates = {
        "mosaic": lambda q, k, v: fused_norm_attention(
            q, k, v, qk_norm=None, causal=causal, sm_scale=1.0, impl=kernel_impl,
            gpu_kernel="mosaic", **(mosaic_tiles or {})),
        "cudnn": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, scale=1.0, is_causal=causal, implementation=norm_cudnn.IMPLEMENTATION)}
    try:
        from jax.experimental.pallas.ops.gpu import attention_mgpu
    except ImportError:
        return candidates
    for block_kv in (256, 128):  # its main() tries 256, 128, 64 and keeps the first that fits
        config = attention_mgpu.TuningConfig(block_q=64, block_kv=block_kv,
                                             max_concurrent_steps=2, causal=causal)
        candidates[f"jax example kv={block_kv}"] = functools.partial(
            attention_mgpu.attention, config=config)
    return candidates


def bench_example(b, h, t, d, rounds, causal: bool, kernel_impl: str = "pallas",
                  dtype=jnp.float16, mosaic_tiles=None):
    """Rows of (name, forward TFLOP/s, ÷ cuDNN's, relative error against cuDNN's output) or
    (name, a failure) for example_candidates, timed interleaved. jax's example takes float16
    alone (XLA:CPU has no float16 product, so a CPU test passes bfloat16)."""
    keys = jax.random.split(jax.random.key(4), 3)
    q, k, v = (jax.random.normal(kk, (b, t, h, d), dtype) for kk in keys)
    flops = 4 * b * h * t * t * d / (2 if causal else 1)
    rows, passes, outputs = [], {}, {}
    for name, fn in example_candidates(causal, kernel_impl, mosaic_tiles).items():
        f = jax.jit(fn)
        try:
            outputs[name] = jax.block_until_ready(f(q, k, v))
        except Exception as error:  # e.g. the example refusing causality under CUDA 12.8
            rows.append((name, failure(error, 120)))
            continue
        passes[name] = functools.partial(f, q, k, v)
    times = interleaved(passes, rounds) if passes else {}
    for name in passes:
        rate = flops / times[name] / 1e12
        ratio = times["cudnn"] / times[name] if "cudnn" in times else float("nan")
        error = (relative_error(outputs[name], outputs["cudnn"]) if "cudnn" in outputs
                 else float("nan"))
        rows.append((name, rate, ratio, error))
    return rows


# The backward at d=4096 ran at 14% of copy with 8 rows × 4 warps (256 float32 values per
# thread per array): more warps and fewer rows are the first things to try; then blocks of 64
# rows walked 1 or 2 rows at a time, which keep the registers of the small blocks but write
# 8-64× fewer partial sums of dscale. Stop 23's H200 sweep at d=4096 set the GPU defaults
# from these (fused_norm.api.default_launches); each launch here sets both passes.
NORM_SWEEP = [(rows_factor, warps) for rows_factor in (0.25, 0.5, 1) for warps in (4, 8, 16)]
NORM_WALKS = [(64, step, warps) for step in (1, 2) for warps in (4, 8)]


def bench_norm(n, d, dtype, kernel_impl, rounds, sweep=False):
    """GB/s of the fused RMSNorm + residual, forward and forward+backward, for the Pallas
    kernel (default launch, and with `sweep` NORM_SWEEP's rows × warps and NORM_WALKS), the
    jitted reference and a copy of x."""
    x = jax.random.normal(jax.random.key(1), (n, d), dtype)
    r = jax.random.normal(jax.random.key(2), (n, d), dtype)
    w = jnp.ones((d,), jnp.float32)
    dy = jax.random.normal(jax.random.key(3), (n, d), dtype)

    def passes(**kw):
        norm = lambda x, r: fused_norm(x, w, None, r, kind="rms", **kw)

        def forward_and_backward(x, r):
            # The outputs are returned too, as in training, where the next layer reads them:
            # asked for gradients alone, XLA drops y and h (stop 23's XLA row, 125% of copy).
            out, vjp = jax.vjp(norm, x, r)
            return out, vjp((dy, dy))
        fwd, both = jax.jit(norm), jax.jit(forward_and_backward)
        return (lambda: fwd(x, r)), (lambda: both(x, r))

    launches = {"pallas": {}}
    if sweep:
        default = block_rows_for(n, d)
        launches.update({f"pallas rows={max(1, int(default * f))} warps={warps}":
                         dict(block_rows=max(1, int(default * f)), num_warps=warps)
                         for f, warps in NORM_SWEEP})
        launches.update({f"pallas rows={rows} step={step} warps={warps}":
                         dict(block_rows=rows, step_rows=step, num_warps=warps)
                         for rows, step, warps in NORM_WALKS if rows <= n})
    candidates = {}
    for name, kw in {**launches, "xla": {}}.items():
        fwd, both = passes(impl="xla" if name == "xla" else kernel_impl, **kw)
        candidates[name], candidates[name + " fwd+bwd"] = fwd, both
    copy = jax.jit(lambda x: x + jnp.asarray(1, x.dtype))
    candidates["copy"] = lambda: copy(x)
    times = interleaved(candidates, rounds)
    # forward: x, r in; y, h out. backward: h, dy, dh in; dx out (dscale's partials are small)
    moved = lambda name: (2 * x.nbytes if name == "copy" else
                          8 * x.nbytes if name.endswith("fwd+bwd") else 4 * x.nbytes)
    return {name: moved(name) / t / 1e9 for name, t in times.items()}


def bench_linear(b, h, t, d, dtype, kernel_impl, rounds):
    """fwd+bwd time ratios: cuDNN softmax attention / our chunked linear attention, and the
    chunked XLA reference / our kernel (whether `auto` should run the kernel at all)."""
    keys = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(kk, (b, t, h, d), dtype) for kk in keys)
    linear = lambda impl: fwd_bwd(
        lambda q, k, v: chunked_linear_attention(q, k, v, chunk_size=64, impl=impl))
    lin, ref = linear(kernel_impl), linear("xla")
    soft = fwd_bwd(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="cudnn" if jax.default_backend() == "gpu" else None))
    times = interleaved({"linear": lambda: lin(q, k, v), "xla": lambda: ref(q, k, v),
                         "softmax": lambda: soft(q, k, v)}, rounds)
    return times["softmax"] / times["linear"], times["xla"] / times["linear"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, interpreted kernels")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10,
                        help="calls per timing sample, dispatched back to back")
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--parts", default="attention,norm,linear",
                        help="any of blocks (a launch sweep of norm-attention, whose best "
                             "settings the attention table then uses), attention, norm, "
                             "normsweep (norm with a rows × warps × steps sweep), linear, "
                             "mosaicsweep (the Mosaic GPU kernels' launch settings), example "
                             "(our Mosaic GPU forward, jax's FlashAttention-3 example and "
                             "cuDNN on plain float16 attention, T=--sweep-length)")
    parser.add_argument("--sweep-length", type=int, default=8192,
                        help="T of the Mosaic GPU sweep (mosaicsweep)")
    parser.add_argument("--sweep-passes", default=",".join(SWEEP_PASSES),
                        help="the Mosaic GPU sweep's passes to time: any of "
                             f"{','.join(SWEEP_PASSES)}")
    parser.add_argument("--mosaic-settings", default=None,
                        help="a JSON file: mosaicsweep writes its best settings per head dim "
                             "there as it goes, and the attention table's mosaic rows use "
                             "them (also from an earlier run's file)")
    parser.add_argument("--candidates", default=None,
                        help="the attention table's rows to time, e.g. mosaic,xla-norm+cudnn "
                             "(default: all)")
    args = parser.parse_args()
    sweep_passes = args.sweep_passes.split(",")
    if set(sweep_passes) - set(SWEEP_PASSES):
        parser.error(f"--sweep-passes {args.sweep_passes!r}: choose from "
                     f"{','.join(SWEEP_PASSES)}")
    global CALLS
    CALLS = 1 if args.smoke else args.calls
    impl = "interpret" if args.smoke else "pallas"
    lengths = [64] if args.smoke else [int(x) for x in args.lengths.split(",")]
    head_dims = [16] if args.smoke else [int(x) for x in args.head_dims.split(",")]
    dtype = jnp.float32 if args.smoke else jnp.bfloat16
    rounds = 2 if args.smoke else args.rounds
    print(f"device: {jax.devices()[0].device_kind}  jax {jax.__version__}  dtype {jnp.dtype(dtype).name}")
    parts = args.parts.split(",")
    only = args.candidates.split(",") if args.candidates else None
    tuned = {}  # head dim -> launch keywords: the sweep's best forward and backward settings
    # head dim -> the Mosaic GPU sweep's best settings (best_mosaic_settings)
    mosaic_tuned = load_mosaic_settings(args.mosaic_settings) if args.mosaic_settings else {}
    if "blocks" in parts:
        sweep_t = 64 if args.smoke else 4096
        print(f"\nTriton norm-attention TFLOP/s (fwd / bwd / fwd+bwd) by (block_q, block_k, "
              f"warps, stages) in both passes, T={sweep_t}")
        for d in head_dims:
            b, h = (1, 2) if args.smoke else (16384 // sweep_t, 16 if d == 64 else 8)
            results, best_fwd, best_bwd = bench_blocks(
                b, h, sweep_t, d, dtype, impl, rounds, [(16, 16, 4, 2)] if args.smoke else SWEEP)
            for setting, rates in results.items():
                cells = rates if isinstance(rates, str) else (
                    " ".join(f"{r:8.1f}" for r in rates[:3]) + f"   error {rates[3]:.1e}")
                print(f"  d={d:4d} {str(setting):18s} {cells}", flush=True)
            if best_fwd:
                tuned[d] = launch(best_fwd, best_bwd)
                print(f"  d={d:4d} best forward {best_fwd}, best backward {best_bwd}")
    if "mosaicsweep" in parts and jax.default_backend() == "gpu":
        sweep_t = args.sweep_length
        print(f"\nMosaic GPU norm-attention TFLOP/s by setting, T={sweep_t}: forward (block_k, "
              "stages, schedule, warpgroups, early key release), backward (block, stages, "
              "how dQ is added, paired products; "
              "split: the dQ kernel), order (heaviest programs first; fwd+bwd); error "
              "against the cuDNN path")
        for d in head_dims:
            b, h = max(1, 16384 // sweep_t), 16 if d == 64 else 8
            rows = []
            for (part, setting), cell in bench_mosaic(b, h, sweep_t, d, dtype, rounds,
                                                      passes=sweep_passes):
                rows.append(((part, setting), cell))
                mosaic_tuned[d] = best_mosaic_settings(rows)
                if args.mosaic_settings:
                    save_mosaic_settings(args.mosaic_settings, mosaic_tuned)
                cell = cell if isinstance(cell, str) else (
                    f"{cell[0]:8.1f}   error {cell[1]:.1e}"
                    + (f"   {cell[2]:.3f}× the default" if len(cell) > 2 else ""))
                print(f"  d={d:4d} {part} {str(setting):18s} {cell}", flush=True)
            print(f"  d={d:4d} best: {mosaic_tuned[d]}")
    if "example" in parts and jax.default_backend() == "gpu":
        t = args.sweep_length
        print(f"\nplain softmax attention forward, float16, logit scale 1, T={t}: TFLOP/s, "
              "÷ cuDNN's, error against cuDNN" + ("; mosaic with its sweep's best settings"
                                                   if mosaic_tuned else ""))
        for d in head_dims:
            for causal in (True, False):
                with mosaic_settings(mosaic_tuned.get(d, {}), d) as mosaic_tiles:
                    rows = bench_example(max(1, 16384 // t), 16 if d == 64 else 8, t, d,
                                         rounds, causal, mosaic_tiles=mosaic_tiles)
                for name, *cells in rows:
                    cells = cells[0] if len(cells) == 1 else (
                        f"{cells[0]:8.1f} {cells[1]:7.2f}x   error {cells[2]:.1e}")
                    print(f"  d={d:4d} {'causal' if causal else 'full':6s} {name:20s} {cells}",
                          flush=True)
    print("\nfused RMSNorm + residual, GB/s (forward: x, r in, y, h out; backward: h, dy, dh in,"
          " dx out); the copy reads and writes x")
    # Before the attention table, whose long rows a time limit may cut. 512 MiB per array:
    # large enough that dispatch (tens of µs) does not bound the time. The widest rows first:
    # their backward ran at 14% of copy (stop 14), the sweep's main question.
    norm_shapes = [(64, 32)] if args.smoke else [(65536, 4096), (262144, 1024), (131072, 2048)]
    for n, d in (norm_shapes if "norm" in parts else []):
        rates = bench_norm(n, d, dtype, impl, rounds, sweep="normsweep" in parts)
        print(f"  {n}x{d}: copy {rates['copy']:.0f}")
        for part in ("fwd", "fwd+bwd"):
            chosen = {name: rate for name, rate in rates.items() if name != "copy"
                      and name.endswith("fwd+bwd") == (part == "fwd+bwd")}
            for name, rate in sorted(chosen.items(), key=lambda kv: -kv[1]):
                print(f"    {part:8s} {name.removesuffix(' fwd+bwd'):28s} {rate:7.0f}  "
                      f"({100 * rate / rates['copy']:.0f}% of copy)")
    print("\nfused norm-attention (rms qk-norm, causal), TFLOP/s: fwd / bwd / fwd+bwd"
          + ("; triton with the sweep's best settings" if tuned else "")
          + ("; mosaic with its sweep's best settings" if mosaic_tuned else ""))
    for d, best in (mosaic_tuned.items() if "attention" in parts else ()):
        print(f"  mosaic at d={d}: {best}")
    for d in (head_dims if "attention" in parts else []):
        for t in lengths:
            b, h = (1, 2) if args.smoke else (max(1, 16384 // t), 16 if d == 64 else 8)
            with mosaic_settings(mosaic_tuned.get(d, {}), d) as mosaic_tiles:
                rows = bench_attention(b, h, t, d, dtype, impl, rounds, tuned.get(d), only,
                                       mosaic_tiles)
            for name, *rates in rows:
                cells = " ".join(f"{r:8.1f}" for r in rates) if len(rates) == 3 else rates[0]
                print(f"  d={d:4d} T={t:6d} {name:15s} {cells}", flush=True)
    print("\nchunked linear attention fwd+bwd speed-up over cuDNN softmax attention, and over "
          "the chunked XLA reference")
    for t in (lengths if "linear" in parts else []):
        over_softmax, over_xla = bench_linear(1, 2 if args.smoke else 16, t,
                                              16 if args.smoke else 64, dtype, impl, rounds)
        print(f"  T={t:6d}: {over_softmax:.2f}x softmax, {over_xla:.2f}x xla")


if __name__ == "__main__":
    main()
