"""Training-step time of the default GPT with LayerNorm vs RMSNorm vs CRMSNorm (Pre-(C)RMSNorm
paper: "up to 10% faster").

    python benchmarks/norms.py                          # default GPT, 32×128 bytes (≈1–2 min on 2 CPU cores)
    python benchmarks/norms.py --rounds 3 --steps 2 --config configs/lm/gpt.py:runlocal

Each kind's full jitted train step (forward, backward, AdamW update) is compiled first; then the
timed steps are interleaved (`steps` steps of each kind per round), so a slow moment of a shared
machine hits all kinds alike. A cell is the median per-step time over the rounds; the ratio is
against LayerNorm measured in the same process. One device, one fixed batch.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax

from jaxlab import config as config_lib
from jaxlab.train.loop import Run

KINDS = ("layernorm", "rmsnorm", "crmsnorm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lm/gpt.py")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    runs, states = {}, {}
    for kind in KINDS:
        cfg = config_lib.load(args.config, {"model.norm": kind, "mesh": [("data", 1)]})
        runs[kind] = Run(cfg, devices=jax.devices()[:1])
    batch = runs[KINDS[0]].batch("train", 0)
    for kind, run in runs.items():  # compile and warm up
        state, metrics = run.train_step(run.init(), batch)
        jax.block_until_ready(metrics["loss"])
        states[kind] = state

    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(args.rounds):
        for kind, run in runs.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                states[kind], metrics = run.train_step(states[kind], batch)
            jax.block_until_ready(metrics["loss"])
            times[kind].append((time.perf_counter() - start) / args.steps)

    cfg = runs[KINDS[0]].config
    print(f"{args.config}: depth {cfg.model.depth}, width {cfg.model.width}, batch "
          f"{cfg.train.batch_size}×{cfg.data.seq_len}, {jax.devices()[0].platform}, "
          f"{args.rounds} rounds × {args.steps} steps")
    reference = statistics.median(times["layernorm"])
    print(f"{'norm':<10} {'ms/step':>8} {'vs layernorm':>13}")
    for kind in KINDS:
        median = statistics.median(times[kind])
        print(f"{kind:<10} {1e3 * median:8.1f} {median / reference:13.3f}")


if __name__ == "__main__":
    main()
