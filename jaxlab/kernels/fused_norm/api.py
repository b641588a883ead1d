"""fused_norm(x, scale, bias=None, residual=None, kind=..., impl=...): the public op."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxlab.errors import ConfigError
from jaxlab.kernels import dispatch
from jaxlab.kernels.fused_norm import pallas
from jaxlab.kernels.fused_norm.reference import KINDS, fused_norm_reference

OP = "fused_norm"

# Backends where impl="auto" takes XLA. On an H100 (benchmarks/RESULTS.md, stop 14) XLA's norm
# forward+backward ran at 107% of copy bandwidth and this kernel's at 63% (d=1024) and 14%
# (d=4096); its forward alone won only at d=1024 (112% against 90%). Training needs both
# passes, so auto takes XLA there until a kernel launch measures faster; impl="pallas" still
# runs the kernel.
XLA_FASTER_ON = frozenset({"gpu"})


def block_rows_for(n: int, d: int) -> int:
    """Rows per program: a power of two (Triton) and a multiple of 8 (TPU sublanes), about
    64 KiB of float32 per block, never far more rows than there are."""
    rows = max(8, min(256, (16384 // max(d, 1))))
    rows = 1 << (rows.bit_length() - 1)
    while rows > 8 and rows // 2 >= n:
        rows //= 2
    return rows


def unsupported(d: int, itemsize: int = 4) -> str | None:
    """Why the Pallas kernel cannot take feature size d on this backend, or None if it can."""
    backend = dispatch.backend()
    if backend == "gpu" and d & (d - 1):
        return f"the Triton kernel needs a power-of-two feature size, got {d}"
    if backend == "tpu":
        if d % 128:
            return f"the TPU kernel needs a feature size that is a multiple of 128, got {d}"
        rows = block_rows_for(1 << 20, d)
        # backward: h, dy, dh in and dx out, double-buffered, plus float32 temporaries
        return dispatch.over_vmem("row blocks", rows * d * (8 * itemsize + 4 * 4))
    return None


def fused_norm(x, scale, bias=None, residual=None, *, kind: str = "rms", eps: float = 1e-6,
               impl: str = "auto", block_rows: int | None = None, num_warps: int = 4,
               step_rows: int | None = None):
    """norm(x + residual) · scale + bias over the last axis; returns y, or (y, x + residual).

    kind "rms" (RMSNorm, bias allowed but unusual) or "layer" (LayerNorm). Statistics run in
    float32; y and h keep x's dtype. impl: see jaxlab.kernels ("auto" on a GPU takes XLA:
    this kernel's backward measured slower there, XLA_FASTER_ON). block_rows (rows per
    program, a power of two; default about 64 KiB of float32), num_warps and step_rows (rows a
    program handles at a time as it walks its block, a power of two up to block_rows; default
    the whole block) tune the GPU kernel.
    """
    if kind not in KINDS:
        raise ConfigError(f"fused_norm kind {kind!r} is unknown; valid: {', '.join(KINDS)}")
    try:
        path = dispatch.resolve(OP, impl, unsupported(x.shape[-1], x.dtype.itemsize),
                                xla_faster_on=XLA_FASTER_ON)
    except dispatch.Unsupported as error:
        raise ConfigError(str(error)) from None
    for name, value in (("block_rows", block_rows), ("step_rows", step_rows)):
        if value is not None and (value < 1 or value & (value - 1)):
            raise ConfigError(f"{name} must be a power of two, got {value}")
    if path == "xla":
        return fused_norm_reference(x, scale, bias, residual, kind=kind, eps=eps)
    n, d = _rows(x).shape
    block = block_rows or block_rows_for(n, d)
    step = step_rows or block
    if step > block:
        raise ConfigError(f"step_rows {step} is more than block_rows {block}; valid: a "
                          f"power of two up to {block}")
    sublanes = 8 * max(1, 4 // x.dtype.itemsize)  # a TPU tile's rows: 8 float32, 16 bfloat16
    if dispatch.backend() == "tpu" and step % sublanes:
        raise ConfigError(f"step_rows {step} is not a multiple of {sublanes}, the TPU "
                          f"tile's rows for {x.dtype}")
    launch = (block, num_warps, step)
    return _fused(x, scale, bias, residual, kind, eps, path == "interpret", launch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fused(x, scale, bias, residual, kind, eps, interpret, launch):
    return _fused_fwd(x, scale, bias, residual, kind, eps, interpret, launch)[0]


def _rows(a) -> jax.Array:
    return a.reshape(-1, a.shape[-1])


def _pad_rows(a, n_pad: int) -> jax.Array:
    # Padded rows are zeros: their statistics stay finite and they are sliced away.
    return jnp.pad(a, ((0, n_pad - a.shape[0]), (0, 0)))


def _fused_fwd(x, scale, bias, residual, kind, eps, interpret, launch):
    """launch: (rows per program, warps, rows per step)."""
    n, d = _rows(x).shape
    block, warps, step = launch
    n_pad = -(-n // block) * block
    y, h, mean, rstd = pallas.forward(
        _pad_rows(_rows(x), n_pad), scale, bias,
        None if residual is None else _pad_rows(_rows(residual), n_pad),
        kind=kind, eps=eps, block_rows=block, num_warps=warps, step_rows=step, interpret=interpret,
        lane_dense=dispatch.lane_dense())
    y_out = y[:n].reshape(x.shape)
    out = y_out if residual is None else (y_out, h[:n].reshape(x.shape))
    saved_h = _pad_rows(_rows(x), n_pad) if h is None else h
    # `bias` and `residual` ride along only to say whether they exist (None is an empty tree).
    return out, (saved_h, scale, mean, rstd, bias, residual)


def _fused_bwd(kind, eps, interpret, launch, saved, cotangent):
    h, scale, mean, rstd, bias, residual = saved
    dy, dh = cotangent if residual is not None else (cotangent, None)
    n = _rows(dy).shape[0]
    n_pad = h.shape[0]
    block, warps, step = launch
    dx, dscale, dbias = pallas.backward(
        h, _pad_rows(_rows(dy), n_pad), None if dh is None else _pad_rows(_rows(dh), n_pad),
        scale, mean, rstd, kind=kind, block_rows=block, num_warps=warps, step_rows=step,
        interpret=interpret, lane_dense=rstd.ndim == 2)  # the layout the forward chose
    dx = dx[:n].reshape(dy.shape)
    return (dx, dscale.astype(scale.dtype), None if bias is None else dbias.astype(bias.dtype),
            None if residual is None else dx)


_fused.defvjp(_fused_fwd, _fused_bwd)
