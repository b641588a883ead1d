"""Prints the Mosaic GPU kernels of `fused_norm_attention` as lowered for an H100, on any
machine (no GPU needed): without source locations and with value names renumbered in order of
appearance, so that two checkouts' kernels can be diffed, or with --events as the order of
the instructions that make a schedule (tile products, their commits and waits, barrier waits,
exponentials, loops; with --arrivals the barrier arrivals too), or with --loop-ops as the
operations of the compute warpgroups' first key loop, counted by kind. --kernel example lowers
jax's own FlashAttention-3 forward in Mosaic GPU (float16) instead of ours, for comparison.

    python tools/mosaic_kernels.py --head-dim 128 > here.mlir
    python tools/mosaic_kernels.py --head-dim 128 --checkout ../other > there.mlir
    python tools/mosaic_kernels.py --head-dim 128 --schedule overlap --events
    python tools/mosaic_kernels.py --set mosaic_gpu.EARLY_KEY_RELEASE=True --events --arrivals
    python tools/mosaic_kernels.py --head-dim 128 --qk-norm none --dtype float16 --loop-ops
    python tools/mosaic_kernels.py --head-dim 128 --kernel example --loop-ops
    python tools/mosaic_kernels.py --set mosaic_gpu.HEAVIEST_FIRST=False --grad

Two lowerings that print the same text are the same program down to Mosaic GPU's dialects;
what happens below them (LLVM, ptxas, the GPU) is the same too, up to those tools' versions.
Needs jax >= 0.11 (Mosaic GPU's lowering).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import re
import sys
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
from jax._src.interpreters import mlir as jax_mlir
from jax._src.lib.mlir import ir

REPOSITORY = Path(__file__).resolve().parents[1]

# The instructions --events lists, each by a pattern of the kernel's text and a short name.
EVENTS = [(re.compile(r"wgmma\.mma_async"), "wgmma"),
          (re.compile(r"wgmma\.commit_group"), "commit"),
          (re.compile(r"wgmma\.wait_group\.sync\.aligned (\d+)"), "wait {}"),
          (re.compile(r"mbarrier\.try_wait"), "barrier wait"),
          (re.compile(r"ex2\.approx"), "exp2"),
          (re.compile(r"\"?scf\.for\"?"), "loop")]
# With --arrivals, also the barrier arrivals a warpgroup makes itself (not a copy's: those
# are arrive.expect_tx): the turns taken and the slots freed.
ARRIVAL = (re.compile(r"mbarrier\.arrive\.release"), "arrive")
# --loop-ops' kinds of operation, the first whose pattern matches an operation's name; the
# rest ("other") move values between vectors and registers.
OP_KINDS = [("float arithmetic", re.compile(r"^arith\.\w+f$")),
            ("integer arithmetic", re.compile(r"^(arith\.(\w+i|remui|remsi|divui|divsi|xori|andi|"
                                              r"ori|shli|shrui)|llvm\.(add|mul|and|or|lshr|shl))$")),
            ("shared memory loads", re.compile(r"^(llvm|memref)\.load$")),
            ("barrier waits", re.compile(r"mbarrier\.try_wait")),
            ("inline PTX (wgmma, exp2, arrivals)", re.compile(r"^llvm\.inline_asm$"))]


def use_checkout(checkout) -> None:
    """Import jaxlab from `checkout` (a directory holding jaxlab/) from now on, also where an
    editable install of another checkout would answer `import jaxlab` first. Once jaxlab is
    imported (main() called from a test, say), only its own checkout can be used."""
    if "jaxlab" in sys.modules:
        imported = Path(sys.modules["jaxlab"].__file__).resolve().parents[1]
        if imported == Path(checkout).resolve():
            return
        raise RuntimeError(f"jaxlab is already imported from {imported}: use_checkout must "
                           "run before jaxlab is imported")
    sys.meta_path[:] = [finder for finder in sys.meta_path
                        if not getattr(finder, "__module__", "").startswith("__editable___jaxlab")]
    sys.path.insert(0, str(checkout))


def kernel_modules() -> dict:
    """The modules whose constants --set may change, by name."""
    from jaxlab.kernels.norm_attention import mosaic_backward, mosaic_gpu
    return {"mosaic_gpu": mosaic_gpu, "mosaic_backward": mosaic_backward}


def lowered_kernels(head_dim: int = 64, length: int = 512, *, qk_norm: str | None = "rms",
                    normalizer: str = "softmax", causal: bool = True, grad: bool = False,
                    settings=(), dtype=jnp.bfloat16) -> list[bytes]:
    """The serialized Mosaic GPU modules of one call (forward; with grad the backward's too),
    batch 1, as many heads as the benchmarks use; settings: (module, name, value)
    constants to set while it is traced, e.g. (mosaic_gpu, "FORWARD_SCHEDULE", "overlap")."""
    from jaxlab.kernels.norm_attention import fused_norm_attention
    x = inputs(head_dim, length, dtype)

    def attend(q, k, v):
        return fused_norm_attention(q, k, v, None, None, qk_norm=qk_norm,
                                    normalizer=normalizer, causal=causal, impl="pallas",
                                    gpu_kernel="mosaic")
    fn = jax.grad(lambda *a: attend(*a).astype(jnp.float32).sum(), (0, 1, 2)) if grad else attend
    with contextlib.ExitStack() as stack:
        for owner, name, value in settings:
            stack.enter_context(mock.patch.object(owner, name, value))
        return serialized_kernels(fn, x)


def example_kernels(head_dim: int = 64, length: int = 512, causal: bool = True,
                    block_kv: int = 128) -> list[bytes]:
    """The serialized forward kernel of jax's FlashAttention-3 example in Mosaic GPU
    (jax.experimental.pallas.ops.gpu.attention_mgpu), float16 (the only dtype it takes)."""
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    config = attention_mgpu.TuningConfig(block_q=64, block_kv=block_kv, max_concurrent_steps=2,
                                         causal=causal)
    fn = functools.partial(attention_mgpu.attention, config=config)
    with contextlib.ExitStack() as stack:
        if attention_mgpu.cuda_versions is None:  # a CPU jax: its causal check asks for one
            runtime = mock.Mock(cuda_runtime_get_version=mock.Mock(return_value=13000))
            stack.enter_context(mock.patch.object(attention_mgpu, "cuda_versions", runtime))
        return serialized_kernels(fn, inputs(head_dim, length, jnp.float16))


def inputs(head_dim: int, length: int, dtype):
    """The q, k and v shape of one call: batch 1, the benchmarks' heads at this head dim."""
    return jax.ShapeDtypeStruct((1, length, 16 if head_dim == 64 else 8, head_dim), dtype)


def serialized_kernels(fn, x) -> list[bytes]:
    """The Mosaic GPU modules in fn(x, x, x) lowered for CUDA, in program order."""
    from jaxlab.kernels import dispatch
    with dispatch.target("gpu"):
        module = jax.jit(fn).trace(x, x, x).lower(lowering_platforms=("cuda",))
        module = module.compiler_ir("stablehlo")
    kernels = []

    def collect(op):
        if op.name == "stablehlo.custom_call" and "mhlo.backend_config" in op.attributes:
            config = ir.DictAttr(op.attributes["mhlo.backend_config"])
            if "module" in config:
                kernels.append(ir.StringAttr(config["module"]).value_bytes)
        return ir.WalkResult.ADVANCE
    module.operation.walk(collect)
    return kernels


@functools.cache
def parsing_context():
    """The MLIR context kernel_text parses in, its own: jax's upstream dialects and Mosaic
    GPU's registered, the rest (the serialized kernel's stable_mosaic_gpu ops) allowed
    unregistered. Not jax's make_ir_context, which hands out a thread's shared context (up to
    ten times) that holds Mosaic GPU's dialect only where a lowering registered it there:
    parsing in it failed at random ("invalid memref element type")."""
    from jax.experimental.mosaic.gpu import dialect as mosaic_gpu_dialect  # jax >= 0.11
    context = ir.Context()
    context.append_dialect_registry(jax_mlir.upstream_dialects)
    context.load_all_available_dialects()
    mosaic_gpu_dialect.register_dialect(context)
    context.allow_unregistered_dialects = True
    return context


def kernel_text(serialized: bytes) -> str:
    """One kernel's module as text, locations left out, names renumbered (see module doc)."""
    with parsing_context():
        text = ir.Module.parse(serialized).operation.get_asm(enable_debug_info=False)
    names: dict[str, str] = {}
    return re.sub(r"%[\w.]+", lambda m: names.setdefault(m.group(0), f"%{len(names)}"), text)


def events(text: str, arrivals: bool = False) -> list[str]:
    """The schedule's instructions in program order, runs of one kind counted: '8 × wgmma';
    with `arrivals` the barrier arrivals too (ARRIVAL)."""
    found = []
    for line in text.splitlines():
        for pattern, name in EVENTS + ([ARRIVAL] if arrivals else []):
            match = pattern.search(line)
            if match:
                found.append(name.format(*match.groups()))
    runs: list[list] = []
    for name in found:
        if runs and runs[-1][1] == name:
            runs[-1][0] += 1
        else:
            runs.append([1, name])
    return [f"{count} × {name}" if count > 1 else name for count, name in runs]


def loop_ops(text: str) -> dict[str, int]:
    """Operations in the first loop that carries values (the compute warpgroups' first key
    loop: unmasked blocks where there are any), counted by OP_KINDS, and their total."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)
                 if re.match(r"\s*%[\w:]+ = \"?(stable_mosaic_gpu\.)?scf\.for", line))
    depth, body = 0, []
    for line in lines[start:]:
        depth += line.count("({") - line.count("})")
        body.append(line)
        if depth <= 0:
            break
    counts = {kind: 0 for kind, _ in OP_KINDS} | {"other": 0}
    for name in re.findall(r'"(?:stable_mosaic_gpu\.)?([a-z_]+\.[a-z_.]+)"\(', "\n".join(body)):
        kind = next((kind for kind, pattern in OP_KINDS if pattern.search(name)), "other")
        counts[kind] += 1
    return counts | {"total": sum(counts.values())}


def parse_setting(parser, text: str):
    """'module.NAME=literal' -> (module, NAME, value); a bad one ends the run with a usage
    error naming it."""
    modules = kernel_modules()
    target, _, value = text.partition("=")
    owner, _, name = target.partition(".")
    if owner not in modules or not hasattr(modules[owner], name):
        parser.error(f"--set {text!r}: expected MODULE.NAME=VALUE with a constant NAME of "
                     f"{' or '.join(modules)}")
    try:
        return modules[owner], name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parser.error(f"--set {text!r}: the value {value!r} is not a Python literal")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--head-dim", type=int, default=64, choices=(64, 128))
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--qk-norm", default="rms", choices=("rms", "layer", "none"))
    parser.add_argument("--normalizer", default="softmax", choices=("softmax", "softplus"))
    parser.add_argument("--not-causal", action="store_true")
    parser.add_argument("--grad", action="store_true", help="the backward's kernels too")
    parser.add_argument("--schedule", default=None,
                        help="the forward's schedule, one of mosaic_gpu.SCHEDULES (default: "
                             "mosaic_gpu.FORWARD_SCHEDULE)")
    parser.add_argument("--set", action="append", default=[], metavar="MODULE.NAME=VALUE",
                        help="a constant of mosaic_gpu or mosaic_backward to set, the value a "
                             "Python literal, e.g. mosaic_gpu.HEAVIEST_FIRST=False; repeatable")
    parser.add_argument("--events", action="store_true",
                        help="print each kernel's schedule instructions, not its text")
    parser.add_argument("--arrivals", action="store_true",
                        help="with --events, list the barrier arrivals too")
    parser.add_argument("--loop-ops", action="store_true",
                        help="print the operations of each kernel's first key loop by kind")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--kernel", default="ours", choices=("ours", "example"),
                        help="example: jax's FlashAttention-3 forward (float16, no norm, "
                             "block_kv 128) instead of ours")
    parser.add_argument("--checkout", type=Path, default=REPOSITORY,
                        help="the checkout whose kernels to lower (default: this one)")
    args = parser.parse_args(argv)
    if not (args.checkout / "jaxlab" / "__init__.py").is_file():
        parser.error(f"--checkout {str(args.checkout)!r} holds no jaxlab/__init__.py")
    use_checkout(args.checkout)
    from jaxlab.kernels.norm_attention import mosaic_gpu
    if not mosaic_gpu.available():
        parser.error(f"Mosaic GPU's lowering needs jax >= 0.11, this is {jax.__version__}")
    if args.length < 1:
        parser.error(f"--length {args.length}: give at least 1 token")
    settings = [parse_setting(parser, text) for text in args.set]
    if args.schedule is not None:
        schedules = getattr(mosaic_gpu, "SCHEDULES", ())
        if args.schedule not in schedules:
            parser.error(f"--schedule {args.schedule!r}: this checkout's schedules are "
                         f"{schedules or 'none (it predates them)'}")
        settings.append((mosaic_gpu, "FORWARD_SCHEDULE", args.schedule))
    if args.kernel == "example" and args.grad:
        parser.error("--kernel example: jax's example has no causal backward; drop --grad")
    try:
        if args.kernel == "example":
            kernels = example_kernels(args.head_dim, args.length, not args.not_causal)
        else:
            kernels = lowered_kernels(args.head_dim, args.length,
                                      qk_norm=None if args.qk_norm == "none" else args.qk_norm,
                                      normalizer=args.normalizer, causal=not args.not_causal,
                                      grad=args.grad, settings=settings,
                                      dtype=jnp.dtype(args.dtype))
    except ValueError as error:  # jaxlab's ConfigError too: a setting the kernels refuse
        parser.error(str(error).splitlines()[0])
    for number, serialized in enumerate(kernels):
        text = kernel_text(serialized)
        print(f"// kernel {number + 1} of {len(kernels)}")
        if args.loop_ops:
            print("\n".join(f"{count:6d}  {kind}" for kind, count in loop_ops(text).items()))
        else:
            print("\n".join(events(text, args.arrivals)) if args.events else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
