"""Choosing between the XLA reference and the Pallas kernel of an op."""
from __future__ import annotations

import jax

from jaxlab.errors import ConfigError

IMPLS = ("auto", "xla", "pallas", "interpret")
_PATHS: dict[str, str] = {}


class Unsupported(Exception):
    """Raised by a kernel's shape check: `auto` then falls back to XLA, `pallas` fails."""


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ConfigError(f"kernel implementation {impl!r} is unknown; valid: {', '.join(IMPLS)}")
    return impl


def resolve(op: str, impl: str, supported: str | None) -> str:
    """The path `op` takes: "xla", "pallas" or "interpret".

    `supported` is None when the Pallas kernel accepts these shapes on this backend, or the
    reason it does not. Explicit "pallas" with a reason raises; "auto" falls back to XLA.
    """
    check_impl(impl)
    backend = jax.default_backend()
    if impl == "auto":
        path = "pallas" if backend in ("gpu", "tpu") and supported is None else "xla"
    elif impl == "pallas":
        if backend not in ("gpu", "tpu"):
            raise Unsupported(f"{op}: Pallas needs a GPU or TPU, this backend is {backend}; "
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
    backend = jax.default_backend()
    if backend == "gpu":
        from jax.experimental.pallas import triton as pl_triton
        return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    return None
