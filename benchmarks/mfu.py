"""Training throughput and MFU of GPT configs on one accelerator, in bf16.

    python benchmarks/mfu.py                    # 125M and 350M at T=2048 (a GPU run)
    python benchmarks/mfu.py --smoke            # anywhere: a tiny config, seconds

MFU = model FLOP/s over the chip's peak, where model FLOPs are 6·N·tokens for the matmul
parameters plus causal attention (halved by the mask): the formula of benchmarks/train_step.py.
It is given twice: against the datasheet bf16 dense peak (--peak-tflops, H100 SXM 989) and
against a bf16 matmul measured in the same run. The batch is fixed and reused, so the input
pipeline is not timed. Each setting is a list of config overrides; the table ends the output.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import interleaved  # noqa: E402
from benchmarks.train_step import jaxlab_step, model_flops_per_step  # noqa: E402
from jaxlab import config as config_lib  # noqa: E402

SIZES = {  # GPT-2 small and medium shapes on the 50k-token vocabulary size
    "125M": ("configs/lm/gpt.py:depth=12,width=768,heads=12,seq_len=2048,batch=16", 50304),
    "350M": ("configs/lm/gpt.py:depth=24,width=1024,heads=16,seq_len=2048,batch=8", 50304),
    "smoke": ("configs/lm/gpt.py:depth=2,width=64,heads=2,seq_len=64,batch=4", 256),
}
SETTINGS = {
    "bf16": {"model.dtype": "bfloat16"},
    "bf16+remat": {"model.dtype": "bfloat16", "model.remat": "full"},
    # kernels: what `auto` picks on the GPU (cuDNN attention, XLA norms), and the same with
    # attention in the Hopper Mosaic GPU kernels
    "bf16+auto": {"model.dtype": "bfloat16", "model.kernels": "auto"},
    "bf16+mosaic": {"model.dtype": "bfloat16", "model.kernels": "auto",
                    "model.attention_gpu_kernel": "mosaic"},
}
DEFAULT_SETTINGS = "bf16,bf16+remat"


def matmul_tflops(n: int, dtype, rounds: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda a, b: a @ b)
    return 2 * n ** 3 / interleaved({"mm": lambda: f(a, b)}, rounds)["mm"] / 1e12


def measure(size: str, overrides: dict, rounds: int):
    arg, vocab = SIZES[size]
    config = config_lib.load(arg, {"mesh": [("data", 1)], "model.vocab_size": vocab, **overrides})
    print(f"{size} {overrides}: building", flush=True)
    step, _ = jaxlab_step(config)
    start = time.perf_counter()
    jax.block_until_ready(step())
    compile_s = time.perf_counter() - start
    print(f"{size}: first step (compile) {compile_s:.1f} s", flush=True)
    seconds = interleaved({"step": step}, rounds=rounds, warmup=2)["step"]
    tokens = config.train.batch_size * config.data.seq_len
    return seconds, tokens, model_flops_per_step(config), compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--sizes", default="125M,350M")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS,
                        help=f"any of {', '.join(SETTINGS)}")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    sizes = ["smoke"] if args.smoke else args.sizes.split(",")
    dtype = jnp.float32 if args.smoke else jnp.bfloat16
    measured = matmul_tflops(256 if args.smoke else 8192, dtype, 2 if args.smoke else 10)
    rows = []
    for size in sizes:
        for name in args.settings.split(","):
            try:
                rows.append((size, name, *measure(size, SETTINGS[name], 2 if args.smoke else args.rounds)))
            except Exception as error:  # an out-of-memory setting is a row, not the end of the run
                print(f"{size} {name}: failed: {str(error).splitlines()[0][:200]}", flush=True)
            else:
                print(f"{size} {name}: {1e3 * rows[-1][2]:.1f} ms/step", flush=True)
    print(f"\ndevice: {jax.devices()[0].device_kind}, jax {jax.__version__}; "
          f"measured {jnp.dtype(dtype).name} matmul {measured:.0f} TFLOP/s; "
          f"datasheet peak {args.peak_tflops:.0f} TFLOP/s")
    print(f"{'size':6s} {'setting':12s} {'ms/step':>8s} {'tokens/s':>9s} {'TFLOP/s':>8s} "
          f"{'MFU':>6s} {'of mm':>6s} {'compile s':>9s}")
    for size, name, seconds, tokens, flops, compile_s in rows:
        rate = flops / seconds / 1e12
        print(f"{size:6s} {name:12s} {1e3 * seconds:8.1f} {tokens / seconds:9.0f} {rate:8.1f} "
              f"{rate / args.peak_tflops:6.1%} {rate / measured:6.1%} {compile_s:9.1f}")


if __name__ == "__main__":
    main()
