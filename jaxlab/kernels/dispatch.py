"""Choosing between the XLA reference and the Pallas kernel of an op."""
from __future__ import annotations

import contextlib

import jax

from jaxlab.errors import ConfigError

IMPLS = ("auto", "xla", "pallas", "interpret")
_PATHS: dict[str, str] = {}
_TARGET: list[str] = []  # set by `target`: the backend kernels are lowered for


def backend() -> str:
    """The backend the kernels are built for: JAX's default, or the one `target` names."""
    return _TARGET[-1] if _TARGET else jax.default_backend()


# What a lowering without the accelerator targets: jax 0.12's Triton lowering asks for the GPU's
# kind, and the Mosaic TPU lowering reads the chip's tiling and memory sizes from its kind.
ABSTRACT_GPU = "NVIDIA H100 80GB HBM3"
ABSTRACT_TPU = "TPU v5 lite"  # v5e: one TensorCore per chip


def _abstract_device(name: str):
    """The abstract device `target(name)` lowers for, or None when JAX's default one is it."""
    if jax.default_backend() == name:
        return None
    if name == "gpu":
        return jax.sharding.AbstractDevice(device_kind=ABSTRACT_GPU, num_cores=None,
                                           platform="gpu")
    if name == "tpu":
        return jax.sharding.AbstractDevice(device_kind=ABSTRACT_TPU, num_cores=1,
                                           platform="tpu")
    return None


@contextlib.contextmanager
def target(name: str):
    """Build kernels for backend `name` ("gpu" or "tpu") on any machine, so that a CPU can
    check their lowering: `with target("gpu"): jax.jit(f).trace(x).lower(
    lowering_platforms=("cuda",))` runs the whole Pallas-to-Triton lowering without a GPU, and
    `target("tpu")` with `lowering_platforms=("tpu",)` the Pallas-to-Mosaic one (for an H100 or
    a TPU v5e, named through an abstract mesh when no such device is attached)."""
    _TARGET.append(name)
    try:
        device = _abstract_device(name)
        if device is None:
            yield
        else:
            mesh = jax.sharding.AbstractMesh((1,), (name,), abstract_device=device)
            with jax.sharding.use_abstract_mesh(mesh):
                yield
    finally:
        _TARGET.pop()


# Bytes of blocks one TPU program may hold in VMEM, double buffering and float32 temporaries
# included: well under the 16 MiB Mosaic allows by default on TPU v4 to v6e, so that shapes
# whose blocks would not fit fall back to XLA instead of failing to compile.
TPU_VMEM_BUDGET = 12 * 2**20


def lane_dense() -> bool:
    """Whether kernels lay per-row values (statistics, segment ids) out lane-dense, as
    [rows, 128] slabs: on TPU, where Mosaic tiles a block's last two dims by (8, 128)."""
    return backend() == "tpu"


def over_vmem(what: str, nbytes: int) -> str | None:
    """The reason a TPU program holding `nbytes` of blocks is refused, or None if it fits."""
    if nbytes <= TPU_VMEM_BUDGET:
        return None
    return (f"the TPU kernel would hold about {nbytes / 2**20:.1f} MiB of {what} in VMEM, "
            f"over its {TPU_VMEM_BUDGET / 2**20:.0f} MiB budget")


class Unsupported(Exception):
    """Raised by a kernel's shape check: `auto` then falls back to XLA, `pallas` fails."""


def check_impl(impl: str) -> str:
    """`impl` if it is one of IMPLS, else a ConfigError listing them."""
    if impl not in IMPLS:
        raise ConfigError(f"kernel implementation {impl!r} is unknown; valid: {', '.join(IMPLS)}")
    return impl


def resolve(op: str, impl: str, supported: str | None,
            xla_faster_on: frozenset[str] = frozenset()) -> str:
    """The path `op` takes: "xla", "pallas" or "interpret".

    `supported` is None when the Pallas kernel accepts these shapes on this backend, or the
    reason it does not. Explicit "pallas" with a reason raises; "auto" falls back to XLA, and
    also takes XLA on the backends in `xla_faster_on`, where XLA measured faster.
    """
    check_impl(impl)
    here = backend()
    if impl == "auto":
        kernel_wins = here in ("gpu", "tpu") and here not in xla_faster_on
        path = "pallas" if kernel_wins and supported is None else "xla"
    elif impl == "pallas":
        if here not in ("gpu", "tpu"):
            raise Unsupported(f"{op}: Pallas needs a GPU or TPU, this backend is {here}; "
                              f"use impl='interpret' or 'xla'")
        if supported is not None:
            raise Unsupported(f"{op}: {supported}")
        path = "pallas"
    else:
        path = impl
    record(op, path)
    return path


def record(op: str, path: str) -> None:
    """Note the path a trace of `op` took, for `last_path`."""
    _PATHS[op] = path


def last_path(op: str) -> str | None:
    """The path the last trace of `op` took (None if it never ran): "xla", "pallas",
    "interpret", or for fused_norm_attention also "cudnn" (see its cudnn.py) and "mosaic"
    (its Mosaic GPU kernels compiled; "pallas" is then the Triton kernel)."""
    return _PATHS.get(op)


def compiler_params(num_warps: int = 4, num_stages: int = 2,
                    dimension_semantics: tuple[str, ...] | None = None):
    """Backend parameters for a compiled pallas_call; None when interpreting on CPU.

    On GPU they are passed explicitly: the default lowering differs between jax 0.11 (Mosaic
    GPU) and 0.12 (Triton), and these kernels are written for the Triton lowering. On TPU,
    `dimension_semantics` says per grid axis whether its programs are independent
    ("parallel": Mosaic may split them over TensorCores) or must run in order ("arbitrary").
    """
    if backend() == "gpu":
        from jax.experimental.pallas import triton as pl_triton
        return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    if backend() == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        return pltpu.CompilerParams(dimension_semantics=dimension_semantics)
    return None
