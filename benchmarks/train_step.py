"""Training step of the default GPT (configs/lm/gpt.py): jaxlab vs PyTorch eager and
torch.compile, on this machine's CPU, interleaved in one run.

    pip install -e ".[bench]" && python benchmarks/train_step.py [--rounds 10] [--no-torch]

Prints ms/step, tokens/s, time ratios against jaxlab, and model FLOP/s as a fraction of an
fp32 matmul peak measured in the same run. FLOPs: 6·N·tokens for the matmul parameters (the
tied head included, the embedding gather not), plus causal attention 6·B·T²·D per layer.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import interleaved  # noqa: E402
from jaxlab import config as config_lib  # noqa: E402
from jaxlab.train.loop import Run  # noqa: E402


def model_flops_per_step(config) -> float:
    m, d = config.model, config.data
    tokens = config.train.batch_size * d.seq_len
    hidden = int(m.width * m.ffn_mult)
    per_layer = 4 * m.width * m.width + 3 * m.width * hidden
    matmul_params = m.depth * per_layer + m.vocab_size * m.width
    # Causal attention: 4·B·T²·D forward halved by the mask, times 3 for forward + backward.
    attention = 6 * config.train.batch_size * d.seq_len ** 2 * m.width * m.depth
    return 6 * matmul_params * tokens + attention


def matmul_peak(n: int = 2048, rounds: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    seconds = interleaved({"matmul": lambda: f(a)}, rounds)["matmul"]
    return 2 * n ** 3 / seconds


def jaxlab_step(config):
    run = Run(config, devices=jax.devices()[:1])
    state = {"state": run.init()}
    batch = run.batch("train", 0)

    def step():
        state["state"], metrics = run.train_step(state["state"], batch)
        return metrics["loss"]
    return step, run.batch("train", 0)


def torch_steps(config, batch, compile_too: bool):
    import torch
    from benchmarks.torch_gpt import GPT, make_optimizer, make_step
    torch.manual_seed(0)
    m = config.model
    inputs = torch.from_numpy(np.asarray(batch["inputs"])).long()
    targets = torch.from_numpy(np.asarray(batch["targets"])).long()
    steps = {}
    for name in (["torch eager", "torch.compile"] if compile_too else ["torch eager"]):
        model = GPT(m.vocab_size, m.width, m.depth, m.num_heads, int(m.width * m.ffn_mult))
        optimizer = make_optimizer(model, config.optim.lr, config.optim.weight_decay)
        if name == "torch.compile":
            model = torch.compile(model)
        step = make_step(model, optimizer, config.optim.clip_norm)
        steps[name] = (lambda s: (lambda: s(inputs, targets).detach()))(step)
    return steps, torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--config", default="configs/lm/gpt.py")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    config = config_lib.load(args.config, {"mesh": [("data", 1)]})
    tokens = config.train.batch_size * config.data.seq_len
    step, batch = jaxlab_step(config)
    candidates = {"jaxlab": step}
    if not args.no_torch:
        steps, torch = torch_steps(config, batch, not args.no_compile)
        candidates.update(steps)
        wrap = lambda f: (lambda: f().item())
        candidates = {k: (wrap(v) if k != "jaxlab" else v) for k, v in candidates.items()}
    peak = matmul_peak()
    times = interleaved(candidates, rounds=args.rounds, warmup=3)
    flops = model_flops_per_step(config)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"jax {jax.__version__}" + ("" if args.no_torch else f", torch {torch.__version__}"))
    print(f"config {args.config}: {tokens} tokens/step, {flops / 1e9:.1f} GFLOP/step, "
          f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s (2048³, same run)")
    print(f"{'':15s} {'ms/step':>9s} {'tokens/s':>10s} {'time/jaxlab':>12s} {'of peak':>8s}")
    for name, seconds in times.items():
        print(f"{name:15s} {1e3 * seconds:9.1f} {tokens / seconds:10.0f} "
              f"{seconds / times['jaxlab']:12.2f} {flops / seconds / peak:8.1%}")


if __name__ == "__main__":
    main()
