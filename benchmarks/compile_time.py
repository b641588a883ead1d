"""Compile time of the GPT train step against depth, blocks unrolled vs `model.scan_layers`,
on this machine's first device.

    python benchmarks/compile_time.py [--depths 2,4,8,16 --width 64 --seq 64 --batch 8 --remat none]

Each row builds the same model twice (scan off and on), traces + lowers the jitted train step
(forward, backward, AdamW) and compiles it, and times one step of each, interleaved. With the
scan the step holds one block body whatever the depth, so its compile time stays flat.
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


def compiled_step(depth, width, seq, batch, remat, scan):
    config = config_lib.load(
        f"configs/lm/gpt.py:width={width},seq_len={seq},depth={depth},batch={batch},"
        f"heads={max(1, width // 32)}",
        {"mesh": [("data", 1)], "model.remat": remat, "model.scan_layers": scan})
    run = Run(config, jax.devices()[:1])
    batch_arrays = run.batch("train", 0)
    start = time.perf_counter()
    lowered = run.train_step.lower(run.restore_target(), batch_arrays)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    state = {"s": run.init()}
    state["s"], metrics = compiled(state["s"], batch_arrays)
    first_loss = float(metrics["loss"])  # the same seed gives the same weights in both layouts

    def step():
        state["s"], metrics = compiled(state["s"], batch_arrays)
        return metrics["loss"]
    return step, lowered_at - start, compiled_at - lowered_at, first_loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="2,4,8,16")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--remat", default="none")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"device {jax.devices()[0].device_kind}, jax {jax.__version__}; width {args.width}, "
          f"seq {args.seq}, batch {args.batch}, remat {args.remat}")
    print(f"{'depth':>5s} {'loop trace s':>12s} {'loop compile s':>14s} {'scan trace s':>12s} "
          f"{'scan compile s':>14s} {'scan/loop total':>15s} {'loop ms':>8s} {'scan ms':>8s} "
          f"{'|loss diff|':>11s}")
    # The process's first compile also pays for warming up the backend; keep it out of the table.
    compiled_step(1, args.width, args.seq, args.batch, args.remat, False)
    for depth in (int(d) for d in args.depths.split(",")):
        loop, loop_trace, loop_compile, loop_loss = compiled_step(
            depth, args.width, args.seq, args.batch, args.remat, False)
        scan, scan_trace, scan_compile, scan_loss = compiled_step(
            depth, args.width, args.seq, args.batch, args.remat, True)
        times = interleaved({"loop": loop, "scan": scan}, rounds=args.rounds)
        ratio = (scan_trace + scan_compile) / (loop_trace + loop_compile)
        print(f"{depth:5d} {loop_trace:12.2f} {loop_compile:14.2f} {scan_trace:12.2f} "
              f"{scan_compile:14.2f} {ratio:15.2f} {1e3 * times['loop']:8.1f} "
              f"{1e3 * times['scan']:8.1f} {abs(scan_loss - loop_loss):11.1e}", flush=True)

if __name__ == "__main__":
    main()
