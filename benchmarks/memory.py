"""Per-device memory of the compiled train step, with 8 fake CPU devices, for data parallel,
FSDP and FSDP + tensor parallel on a ~113M-parameter GPT (width 768, depth 12).

    python benchmarks/memory.py [--width 768 --depth 12 --seq 256 --batch 16]

Parameters and optimizer state per device come from the state's shardings (the largest shard
any device holds); activations and temporaries from XLA's memory analysis of the compiled step.
Nothing is executed, only compiled.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from jaxlab import config as config_lib  # noqa: E402
from jaxlab.train.loop import Run  # noqa: E402

MESHES = {
    "data parallel (data=8)": [("data", 8)],
    "FSDP (fsdp=8)": [("fsdp", 8)],
    "FSDP + tensor (fsdp=4, tensor=2)": [("fsdp", 4), ("tensor", 2)],
}


def per_device_bytes(abstract_tree, shardings) -> int:
    """Bytes of the shard each device holds, summed over leaves (devices hold equal shards)."""
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
        total += math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    return total


def full_bytes(abstract_tree) -> int:
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(abstract_tree))


def measure(width: int, depth: int, seq: int, batch: int, mesh, remat: str = "none") -> dict:
    heads = max(1, width // 64)
    config = config_lib.load(
        f"configs/lm/gpt.py:width={width},depth={depth},heads={heads},seq_len={seq},batch={batch}",
        {"mesh": mesh, "model.remat": remat})
    run = Run(config)
    state = run.abstract_state
    start = time.perf_counter()
    compiled = run.train_step.lower(run.restore_target(), run.batch("train", 0)).compile()
    compile_s = time.perf_counter() - start
    analysis = compiled.memory_analysis()
    params = per_device_bytes(state["params"], run.shardings["params"])
    opt = per_device_bytes(state["opt_state"], run.shardings["opt_state"])
    return {"params_total": full_bytes(state["params"]), "opt_total": full_bytes(state["opt_state"]),
            "params": params, "opt": opt,
            "temp": getattr(analysis, "temp_size_in_bytes", float("nan")),
            "n_params": sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"])),
            "compile_s": compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    mib = lambda b: b / 2 ** 20
    print(f"{jax.device_count()} devices ({jax.devices()[0].platform}), jax {jax.__version__}")
    rows = {name: measure(args.width, args.depth, args.seq, args.batch, mesh)
            for name, mesh in MESHES.items()}
    first = next(iter(rows.values()))
    ideal = (first["params_total"] + first["opt_total"]) / 8
    print(f"model: {first['n_params'] / 1e6:.1f}M parameters; params {mib(first['params_total']):.0f} MiB, "
          f"optimizer state {mib(first['opt_total']):.0f} MiB in total; batch {args.batch}×{args.seq}")
    print(f"{'':34s} {'params':>9s} {'opt':>9s} {'temp':>9s}  (MiB per device)  (params+opt)/(total/8)")
    for name, r in rows.items():
        print(f"{name:34s} {mib(r['params']):9.1f} {mib(r['opt']):9.1f} {mib(r['temp']):9.1f}"
              f"  {(r['params'] + r['opt']) / ideal:27.2f}")
    print("\nrematerialization on the FSDP mesh (model.remat): temp MiB per device, compile s")
    for policy in ("none", "dots", "full"):
        r = measure(args.width, args.depth, args.seq, args.batch, MESHES["FSDP (fsdp=8)"], policy)
        print(f"  {policy:6s} {mib(r['temp']):9.1f} {r['compile_s']:8.1f}")


if __name__ == "__main__":
    main()
