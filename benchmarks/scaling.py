"""Step time and memory of the GPT train step as width and sequence length grow ×1, ×2, ×4, ×8,
for softmax and (chunked) linear attention, on this machine's first device.

    python benchmarks/scaling.py [--base-width 64 --base-seq 128 --depth 2 --batch 8]

Softmax and linear steps of the same shape are timed interleaved; the ratio column shows where
linear attention overtakes softmax (ratio < 1). Memory is XLA's temp allocation of the step.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import interleaved  # noqa: E402
from jaxlab import config as config_lib  # noqa: E402
from jaxlab.train.loop import Run  # noqa: E402


def compiled_step(width, seq, depth, batch, attention):
    config = config_lib.load(
        f"configs/lm/gpt.py:width={width},seq_len={seq},depth={depth},batch={batch},heads={max(1, width // 32)}",
        {"mesh": [("data", 1)], "model.attention": attention})
    run = Run(config, jax.devices()[:1])
    start = time.perf_counter()
    batch_arrays = run.batch("train", 0)
    compiled = run.train_step.lower(run.restore_target(), batch_arrays).compile()
    compile_s = time.perf_counter() - start
    state = {"s": run.init()}

    def step():
        state["s"], metrics = compiled(state["s"], batch_arrays)
        return metrics["loss"]
    return step, compiled.memory_analysis().temp_size_in_bytes, compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-width", type=int, default=64)
    parser.add_argument("--base-seq", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--factors", default="1,2,4,8")
    args = parser.parse_args()
    factors = [int(f) for f in args.factors.split(",")]
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}; depth {args.depth}, "
          f"batch {args.batch}")
    print(f"{'grow':6s} {'width':>6s} {'seq':>6s} {'softmax ms':>11s} {'linear ms':>10s} "
          f"{'lin/soft':>9s} {'softmax MiB':>12s} {'linear MiB':>11s} {'compile s':>10s}")
    for grow in ("width", "seq"):
        for f in factors:
            width = args.base_width * (f if grow == "width" else 1)
            seq = args.base_seq * (f if grow == "seq" else 1)
            soft, soft_mem, soft_c = compiled_step(width, seq, args.depth, args.batch, "softmax")
            lin, lin_mem, lin_c = compiled_step(width, seq, args.depth, args.batch, "linear")
            times = interleaved({"softmax": soft, "linear": lin}, rounds=args.rounds)
            print(f"{grow:6s} {width:6d} {seq:6d} {1e3 * times['softmax']:11.1f} "
                  f"{1e3 * times['linear']:10.1f} {times['linear'] / times['softmax']:9.2f} "
                  f"{soft_mem / 2**20:12.1f} {lin_mem / 2**20:11.1f} {soft_c + lin_c:10.1f}")


if __name__ == "__main__":
    main()
