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


# What a GPU lowering without a GPU targets; jax 0.12's Triton lowering asks for the device.
ABSTRACT_GPU = "NVIDIA H100 80GB HBM3"


@contextlib.contextmanager
def target(name: str):
    """Build kernels for backend `name` ("gpu" or "tpu") on any machine, so that a CPU can
    check their lowering: `with target("gpu"): jax.jit(f).trace(x).lower(
    lowering_platforms=("cuda",))` runs the whole Pallas-to-Triton lowering without a GPU
    (for an H100, named through an abstract mesh when no GPU is attached)."""
    _TARGET.append(name)
    try:
        if name == "gpu" and jax.default_backend() != "gpu":
            device = jax.sharding.AbstractDevice(device_kind=ABSTRACT_GPU, num_cores=None,
                                                 platform="gpu")
            mesh = jax.sharding.AbstractMesh((1,), ("gpu",), abstract_device=device)
            with jax.sharding.use_abstract_mesh(mesh):
                yield
        else:
            yield
    finally:
        _TARGET.pop()


class Unsupported(Exception):
    """Raised by a kernel's shape check: `auto` then falls back to XLA, `pallas` fails."""


def check_impl(impl: str) -> str:
    """`impl` if it is one of IMPLS, else a ConfigError listing them."""
    if impl not in IMPLS:
        raise ConfigError(f"kernel implementation {impl!r} is unknown; valid: {', '.join(IMPLS)}")
    return impl


def resolve(op: str, impl: str, supported: str | None) -> str:
    """The path `op` takes: "xla", "pallas" or "interpret".

    `supported` is None when the Pallas kernel accepts these shapes on this backend, or the
    reason it does not. Explicit "pallas" with a reason raises; "auto" falls back to XLA.
    """
    check_impl(impl)
    here = backend()
    if impl == "auto":
        path = "pallas" if here in ("gpu", "tpu") and supported is None else "xla"
    elif impl == "pallas":
        if here not in ("gpu", "tpu"):
            raise Unsupported(f"{op}: Pallas needs a GPU or TPU, this backend is {here}; "
                              f"use impl='interpret' or 'xla'")
        if supported is not None:
            raise Unsupported(f"{op}: {supported}")
        path = "pallas"
    else:
        path = impl
    _PATHS[op] = path
    return path


def last_path(op: str) -> str | None:
    """The path the last trace of `op` took (None if it never ran)."""
    return _PATHS.get(op)


def compiler_params(num_warps: int = 4, num_stages: int = 2):
    """Backend parameters for a compiled pallas_call; None when interpreting on CPU.

    On GPU they are passed explicitly: the default lowering differs between jax 0.11 (Mosaic
    GPU) and 0.12 (Triton), and these kernels are written for the Triton lowering.
    """
    if backend() == "gpu":
        from jax.experimental.pallas import triton as pl_triton
        return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    return None
