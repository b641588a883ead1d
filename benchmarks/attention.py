"""Forward+backward time of every attention kind relative to softmax, and of the chunked linear
form relative to the lax.scan form, at several sequence lengths.

    python benchmarks/attention.py                 # T = 256, 1024, 4096 (about 2 minutes on 2 CPU cores)
    python benchmarks/attention.py --lengths 256 --repeats 3

Every kind is compiled first; then the timed calls are interleaved (one call of each kind per
round), so a slow moment of a shared machine hits all kinds alike. Each cell is the median of
the rounds divided by softmax's median at the same length. The ops are timed directly, on
[1, T, 4, 32] inputs in float32, as the gradient of a scalar loss with respect to q, k and v.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from jaxlab.ops import attention_variants as variants
from jaxlab.ops import linear_attention as linear
from jaxlab.ops.attention import softmax_attention
from jaxlab.ops.softplus_attention import softplus_attention

HEADS, HEAD_DIM = 4, 32


def linear_kind(form, feature_map="elu1", **kwargs):
    phi = linear.FEATURE_MAPS[feature_map]
    return lambda q, k, v: linear.linear_attention(phi(q), phi(k), v, form=form, **kwargs)[0]


def norm_attention(q, k, v):
    phi = linear.FEATURE_MAPS["elu1"]
    out, _ = linear.linear_attention(phi(q), phi(k), v, form="chunked", normalize=False)
    return variants.rms_normalize(out.reshape(*out.shape[:2], -1))


def sla(q, k, v):
    out, _ = linear.linear_attention(jax.nn.relu(q), jax.nn.relu(k), v, form="chunked")
    kernel = jnp.full((5, HEADS * HEAD_DIM), 0.2, jnp.float32)
    return out + variants.causal_depthwise_conv(v.reshape(*v.shape[:2], -1), kernel).reshape(v.shape)


KINDS = {
    "softmax": lambda q, k, v: softmax_attention(q, k, v, causal=True),
    "linear (chunked)": linear_kind("chunked"),
    "linear (scan)": linear_kind("recurrent"),
    "linear (parallel)": linear_kind("parallel"),
    "norm_attention": norm_attention,
    "diag_attention": lambda q, k, v: variants.block_diagonal_attention(q, k, v, block_size=64,
                                                                        causal=True),
    "sla": sla,
    "softplus (p=1)": lambda q, k, v: softplus_attention(q, k, v, causal=True, train_length=256),
    "softplus (p=2)": lambda q, k, v: softplus_attention(q, k, v, causal=True, train_length=256,
                                                         reweight_p=2.0),
    "idw": lambda q, k, v: variants.idw_attention(q, k, v, causal=True),
    "lsa": linear_kind("chunked", "identity", normalize=False, scale=1.0 / 256),
}


def forward_backward(fn):
    return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) ** 2), argnums=(0, 1, 2)))


def time_length(t: int, repeats: int) -> dict[str, float]:
    keys = jax.random.split(jax.random.key(t), 3)
    q, k, v = (jax.random.normal(key, (1, t, HEADS, HEAD_DIM), jnp.float32) for key in keys)
    compiled = {name: forward_backward(fn) for name, fn in KINDS.items()}
    for fn in compiled.values():  # compile and warm up, untimed
        jax.block_until_ready(fn(q, k, v))
    samples = {name: [] for name in KINDS}
    for _ in range(repeats):
        for name, fn in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(q, k, v))
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {t: time_length(t, args.repeats) for t in args.lengths}
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, "
          f"[1, T, {HEADS}, {HEAD_DIM}] float32, forward+backward, median of {args.repeats}")
    header = "| kind | " + " | ".join(f"T={t}" for t in args.lengths) + " |"
    print("\nTime relative to softmax at the same T (softmax row: milliseconds)\n")
    print(header)
    print("|" + "---|" * (len(args.lengths) + 1))
    for name in KINDS:
        if name == "softmax":
            cells = [f"{results[t][name] * 1e3:.1f} ms" for t in args.lengths]
        else:
            cells = [f"{results[t][name] / results[t]['softmax']:.3g}" for t in args.lengths]
        print(f"| {name} | " + " | ".join(cells) + " |")
    cells = [f"{results[t]['linear (chunked)'] / results[t]['linear (scan)']:.2f}" for t in args.lengths]
    print("\nChunked linear relative to the scan form: " + ", ".join(
        f"T={t}: {c}" for t, c in zip(args.lengths, cells)))


if __name__ == "__main__":
    main()
