"""Kernel benchmark: fused norm-attention, fused norms and chunked linear attention against
cuDNN/XLA, interleaved in one process.

    python benchmarks/kernels.py              # on a GPU: the table for benchmarks/RESULTS.md
    python benchmarks/kernels.py --smoke      # anywhere: tiny shapes, kernels interpreted

Attention FLOPs count 4·B·H·T²·D forward (two matmuls), 2.5× that for the backward, halved
for causal attention. Norm bandwidth counts one read and one write of x (plus the residual).
"""
from __future__ import annotations

import argparse
import functools
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from benchmarks.timing import interleaved  # noqa: E402
from jaxlab.kernels.fused_norm import fused_norm  # noqa: E402
from jaxlab.kernels.linear_attention import chunked_linear_attention  # noqa: E402
from jaxlab.kernels.norm_attention import fused_norm_attention  # noqa: E402
from jaxlab.kernels.norm_attention.reference import head_norm  # noqa: E402


def attention_candidates(q, k, v, scale, kernel_impl: str, causal: bool = True):
    def ours(q, k, v):
        return fused_norm_attention(q, k, v, scale, scale, qk_norm="rms", causal=causal,
                                    impl=kernel_impl)

    def xla(q, k, v):
        return fused_norm_attention(q, k, v, scale, scale, qk_norm="rms", causal=causal, impl="xla")

    def cudnn(q, k, v):
        qn = head_norm(q, scale, "rms", 1e-6).astype(q.dtype)
        kn = head_norm(k, scale, "rms", 1e-6).astype(k.dtype)
        return jax.nn.dot_product_attention(qn, kn, v, is_causal=causal, implementation="cudnn")

    candidates = {"pallas": ours, "xla": xla}
    if jax.default_backend() == "gpu":
        candidates["xla-norm+cudnn"] = cudnn
    return candidates


def bench_blocks(t, d, dtype, rounds, settings):
    """fwd+bwd TFLOP/s of the Pallas kernel per (block_q, block_k, num_warps, num_stages)."""
    b, h = max(1, 16384 // t), 16 if d == 64 else 8
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (b, t, h, d), dtype) for kk in keys)
    scale = jnp.ones((d,), jnp.float32)
    flops = 3.5 * 4 * b * h * t * t * d / 2
    results = {}
    for bq, bk, warps, stages in settings:
        g = fwd_bwd(lambda q, k, v: fused_norm_attention(
            q, k, v, scale, scale, qk_norm="rms", causal=True, impl="pallas", block_q=bq,
            block_k=bk, num_warps=warps, num_stages=stages))
        try:
            results[(bq, bk, warps, stages)] = flops / interleaved(
                {"g": lambda: g(q, k, v)}, rounds)["g"] / 1e12
        except Exception as error:  # e.g. a tile too large for shared memory
            results[(bq, bk, warps, stages)] = f"failed: {str(error).splitlines()[0][:100]}"
    return results


def fwd_bwd(fn):
    loss = lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def bench_attention(b, h, t, d, dtype, kernel_impl, rounds):
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (b, t, h, d), dtype) for kk in keys)
    scale = jnp.ones((d,), jnp.float32)
    flops_fwd = 4 * b * h * t * t * d / 2  # causal
    rows = []
    for name, fn in attention_candidates(q, k, v, scale, kernel_impl).items():
        f = jax.jit(fn)
        g = fwd_bwd(fn)
        try:
            times = interleaved({"fwd": lambda: f(q, k, v), "fwd+bwd": lambda: g(q, k, v)},
                                rounds)
        except Exception as error:  # e.g. the all-XLA path out of memory at long T: a row
            rows.append((name, f"failed: {str(error).splitlines()[0][:120]}"))
            continue
        bwd = max(times["fwd+bwd"] - times["fwd"], 1e-12)
        rows.append((name, flops_fwd / times["fwd"] / 1e12, 2.5 * flops_fwd / bwd / 1e12,
                     3.5 * flops_fwd / times["fwd+bwd"] / 1e12))
    return rows


def bench_norm(n, d, dtype, kernel_impl, rounds):
    x = jax.random.normal(jax.random.key(1), (n, d), dtype)
    r = jax.random.normal(jax.random.key(2), (n, d), dtype)
    w = jnp.ones((d,), jnp.float32)
    ours = jax.jit(functools.partial(fused_norm, kind="rms", impl=kernel_impl))
    ref = jax.jit(functools.partial(fused_norm, kind="rms", impl="xla"))
    copy = jax.jit(lambda x: x * 1)
    times = interleaved({"pallas": lambda: ours(x, w, None, r), "xla": lambda: ref(x, w, None, r),
                         "copy": lambda: copy(x)}, rounds)
    moved = {"pallas": 4 * x.nbytes, "xla": 4 * x.nbytes, "copy": 2 * x.nbytes}  # x, r in; y, h out
    return {name: moved[name] / t / 1e9 for name, t in times.items()}


def bench_linear(b, h, t, d, dtype, kernel_impl, rounds):
    keys = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(kk, (b, t, h, d), dtype) for kk in keys)
    lin = fwd_bwd(lambda q, k, v: chunked_linear_attention(q, k, v, chunk_size=64, impl=kernel_impl))
    soft = fwd_bwd(lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, is_causal=True, implementation="cudnn" if jax.default_backend() == "gpu" else None))
    times = interleaved({"linear": lambda: lin(q, k, v), "softmax": lambda: soft(q, k, v)}, rounds)
    return times["softmax"] / times["linear"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, interpreted kernels")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--parts", default="attention,norm,linear")
    args = parser.parse_args()
    impl = "interpret" if args.smoke else "pallas"
    lengths = [64] if args.smoke else [int(x) for x in args.lengths.split(",")]
    head_dims = [16] if args.smoke else [int(x) for x in args.head_dims.split(",")]
    dtype = jnp.float32 if args.smoke else jnp.bfloat16
    rounds = 2 if args.smoke else args.rounds
    print(f"device: {jax.devices()[0].device_kind}  jax {jax.__version__}  dtype {jnp.dtype(dtype).name}")
    parts = args.parts.split(",")
    if "blocks" in parts:
        print("\nPallas norm-attention fwd+bwd TFLOP/s by (block_q, block_k, warps, stages), T=4096")
        sweep = [(64, 64, 4, 2), (128, 64, 4, 2), (128, 64, 8, 2), (64, 64, 4, 3),
                 (128, 128, 8, 2), (64, 128, 4, 2)]
        for d in head_dims:
            for setting, rate in bench_blocks(4096, d, dtype, rounds, sweep).items():
                print(f"  d={d:4d} {setting}: {rate if isinstance(rate, str) else f'{rate:.1f}'}",
                      flush=True)
    print("\nfused norm-attention (rms qk-norm, causal), TFLOP/s: fwd / bwd / fwd+bwd")
    for d in (head_dims if "attention" in parts else []):
        for t in lengths:
            b, h = (1, 2) if args.smoke else (max(1, 16384 // t), 16 if d == 64 else 8)
            for name, *rates in bench_attention(b, h, t, d, dtype, impl, rounds):
                cells = " ".join(f"{r:8.1f}" for r in rates) if len(rates) == 3 else rates[0]
                print(f"  d={d:4d} T={t:6d} {name:15s} {cells}", flush=True)
    print("\nfused RMSNorm + residual, GB/s")
    norm_shapes = [(64, 32)] if args.smoke else [(16384, 1024), (16384, 4096), (65536, 2048)]
    for n, d in (norm_shapes if "norm" in parts else []):
        rates = bench_norm(n, d, dtype, impl, rounds)
        print(f"  {n}x{d}: " + "  ".join(f"{k} {v:.0f}" for k, v in rates.items())
              + f"  (pallas at {100 * rates['pallas'] / rates['copy']:.0f}% of copy)")
    print("\nchunked linear attention fwd+bwd speed-up over softmax attention")
    for t in (lengths if "linear" in parts else []):
        print(f"  T={t:6d}: {bench_linear(1, 2 if args.smoke else 16, t, 16 if args.smoke else 64, dtype, impl, rounds):.2f}x")


if __name__ == "__main__":
    main()
