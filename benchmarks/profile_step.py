"""Where the CPU training step spends its time: XLA:CPU's own trace, summed per source line.

    PYTHONPATH=. python benchmarks/profile_step.py [--config configs/lm/gpt.py] [--steps 5]

Compiles one config's train step, traces a few steps with `jax.profiler` and sums the time of
every compiled kernel (a fusion, or a library call such as a YNNPACK dot). Each kernel is
attributed through the compiled HLO's stack frames to the innermost line of this repository's
code it came from, so the table reads like a line profile: `jaxlab/layers/ffn.py:56 __call__`.
Kernels from library code (optax) keep their own file. Library calls (`ynn_fusion`, `dot`) are
counted apart from the loops XLA emits itself (elementwise, reductions, transposes).

This is a breakdown, not a comparison: it runs alone, and its shares hold under load even when
its milliseconds do not. CPU only: on a GPU the trace names device kernels differently.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxlab import config as config_lib  # noqa: E402
from jaxlab.train.loop import Run  # noqa: E402

LIBRARY_KERNELS = ("ynn_fusion", "xnn_fusion", "onednn", "dot", "custom-call")
RUNTIME_EVENTS = ("$", "Thunk", "Slinky", "Pjit", "Common", "Parse", "end:")


def hlo_tables(hlo: str) -> dict[str, dict[int, str]]:
    """The numbered tables the HLO text starts with: FileNames, FunctionNames, FileLocations,
    StackFrames; each maps an id to the rest of its line."""
    tables, current = {}, None
    for line in hlo.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
        elif current is not None and (m := re.match(r"(\d+) (.*)", line)):
            current[int(m.group(1))] = m.group(2)
        elif current is not None:
            current = None
    return tables


def frame_sources(tables: dict[str, dict[int, str]], repo: str) -> dict[int, str]:
    """stack_frame_id -> "path:line function" of the innermost frame in this repository's code
    (or the innermost frame at all when none is)."""
    files = {i: json.loads(v) for i, v in tables.get("FileNames", {}).items()}
    functions = {i: json.loads(v) for i, v in tables.get("FunctionNames", {}).items()}

    def location(loc_id: int) -> tuple[str, str]:
        fields = dict(re.findall(r"(\w+)=(\w+)", tables["FileLocations"][loc_id]))
        path = files[int(fields["file_name_id"])]
        name = functions.get(int(fields["function_name_id"]), "?").split(".")[-1]
        return path, f"{os.path.relpath(path, repo) if path.startswith(repo) else path}:" \
                     f"{fields['line']} {name}"

    out = {}
    for start in tables.get("StackFrames", {}):
        chain, seen, frame_id = [], set(), start
        while frame_id not in seen and frame_id in tables["StackFrames"]:
            seen.add(frame_id)
            fields = dict(re.findall(r"(\w+)=(\d+)", tables["StackFrames"][frame_id]))
            chain.append(location(int(fields["file_location_id"])))
            parent = int(fields["parent_frame_id"])
            if parent == frame_id or parent == 0:
                break
            frame_id = parent
        ours = [label for path, label in chain if path.startswith(repo)]
        out[start] = (ours or [label for _, label in chain] or ["?"])[0]
    return out


def instruction_frames(hlo: str) -> dict[str, int]:
    """instruction name -> stack_frame_id, for every instruction in the text that has one."""
    out = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ .*stack_frame_id=(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def kernel_times(trace_dir: str, steps: int) -> collections.Counter:
    """Milliseconds per step of each compiled kernel in the trace."""
    path = sorted(pathlib.Path(trace_dir).rglob("*.trace.json.gz"))[-1]
    events = json.load(gzip.open(path))["traceEvents"]
    times = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith(RUNTIME_EVENTS):
            times[event["name"]] += event.get("dur", 0) / 1e3 / steps
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lm/gpt.py")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    config = config_lib.load(args.config, {"mesh": [("data", 1)]})
    run = Run(config, devices=jax.devices()[:1])
    state, batch = run.init(), run.batch("train", 0)
    compiled = run.train_step.lower(state, batch).compile()
    hlo = compiled.as_text()
    for _ in range(3):
        state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.steps):
                state, _ = compiled(state, batch)
            jax.block_until_ready(state)
        times = kernel_times(trace_dir, args.steps)
    sources = frame_sources(hlo_tables(hlo), repo)
    frames = instruction_frames(hlo)
    by_source, kinds = collections.Counter(), collections.Counter()
    for name, ms in times.items():
        frame = frames.get(name)
        library = name.startswith(LIBRARY_KERNELS)
        kinds["library dots" if library else "XLA-emitted loops"] += ms
        by_source[(sources.get(frame, "(no source)"), library)] += ms
    total = sum(times.values())
    print(f"{args.config}: {total:.1f} ms of kernels per step over {args.steps} traced steps "
          f"(jax {jax.__version__}, {os.cpu_count()} cpus)")
    for kind, ms in kinds.most_common():
        print(f"  {kind:20s} {ms:8.1f} ms  {ms / total:6.1%}")
    print(f"\n{'ms/step':>8s} {'share':>6s}  {'kind':7s} source")
    for (source, library), ms in by_source.most_common(args.top):
        print(f"{ms:8.2f} {ms / total:6.1%}  {'dot' if library else 'loop':7s} {source}")


if __name__ == "__main__":
    main()
