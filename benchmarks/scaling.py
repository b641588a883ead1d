"""Step time and memory of the GPT train step as width and sequence length grow ×1, ×2, ×4, ×8,
for softmax and (chunked) linear attention, on this machine's first device.

    python benchmarks/scaling.py [--base-width 64 --base-seq 128 --depth 2 --batch 8]

Softmax and linear steps of the same shape are timed interleaved; the ratio column shows where
linear attention overtakes softmax (ratio < 1). Memory is per device, from XLA's analysis of the
compiled step: "temp" is its scratch (activations kept for the backward pass and the like), "total"
adds the buffers it is called with and returns (train state and batch; the donated state is
counted once). A second sweep over sequence length at the base width (--crossover-seqs) names
the first length from which linear attention stays faster than softmax.
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
    return step, memory_per_device(compiled), compile_s


def memory_per_device(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
             + stats.temp_size_in_bytes)
    return {"temp": stats.temp_size_in_bytes, "total": total}


def measure(width, seq, args):
    soft, soft_mem, soft_c = compiled_step(width, seq, args.depth, args.batch, "softmax")
    lin, lin_mem, lin_c = compiled_step(width, seq, args.depth, args.batch, "linear")
    times = interleaved({"softmax": soft, "linear": lin}, rounds=args.rounds)
    return times, soft_mem, lin_mem, soft_c + lin_c


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-width", type=int, default=64)
    parser.add_argument("--base-seq", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--factors", default="1,2,4,8")
    parser.add_argument("--crossover-seqs", default="16,32,64,128",
                        help="lengths at the base width for locating the crossover ('' skips)")
    args = parser.parse_args()
    factors = [int(f) for f in args.factors.split(",")]
    mib = 2 ** 20
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}; depth {args.depth}, "
          f"batch {args.batch}; memory in MiB per device")
    print(f"{'grow':6s} {'width':>6s} {'seq':>6s} {'softmax ms':>11s} {'linear ms':>10s} "
          f"{'lin/soft':>9s} {'soft temp':>10s} {'lin temp':>9s} {'soft total':>11s} "
          f"{'lin total':>10s} {'compile s':>10s}")
    ratios = {}  # linear/softmax time at the base width, by sequence length
    for grow in ("width", "seq"):
        for f in factors:
            width = args.base_width * (f if grow == "width" else 1)
            seq = args.base_seq * (f if grow == "seq" else 1)
            times, soft_mem, lin_mem, compile_s = measure(width, seq, args)
            if width == args.base_width:
                ratios[seq] = times["linear"] / times["softmax"]
            print(f"{grow:6s} {width:6d} {seq:6d} {1e3 * times['softmax']:11.1f} "
                  f"{1e3 * times['linear']:10.1f} {times['linear'] / times['softmax']:9.2f} "
                  f"{soft_mem['temp'] / mib:10.1f} {lin_mem['temp'] / mib:9.1f} "
                  f"{soft_mem['total'] / mib:11.1f} {lin_mem['total'] / mib:10.1f} "
                  f"{compile_s:10.1f}", flush=True)
    for seq in (int(t) for t in args.crossover_seqs.split(",") if t):
        if seq not in ratios:
            times, _, _, _ = measure(args.base_width, seq, args)
            ratios[seq] = times["linear"] / times["softmax"]
            print(f"crossover sweep: width {args.base_width} seq {seq:6d} lin/soft "
                  f"{ratios[seq]:.2f}", flush=True)
    seqs = sorted(ratios)
    faster = [seq for seq in seqs if all(ratios[t] < 1 for t in seqs if t >= seq)]
    print(f"linear/softmax by seq at width {args.base_width}: "
          + ", ".join(f"{seq}: {ratios[seq]:.2f}" for seq in seqs))
    print(f"linear attention is faster than softmax from seq {faster[0]} on" if faster else
          f"linear attention is not faster than softmax up to seq {seqs[-1]}")


if __name__ == "__main__":
    main()
