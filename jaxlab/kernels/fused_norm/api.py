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

# Backends where impl="auto" takes XLA. On an H200 (benchmarks/RESULTS.md, stop 23, 65536 ×
# 4096 bf16 with a residual) XLA's norm forward+backward ran at 125% of copy bandwidth, this
# kernel's best launch at 102% (its forward alone at 118%, against XLA's 99%). XLA's number
# is flattered: the timed function returned only gradients, so XLA wrote no y and h, which
# the benchmark now returns too. Until that is timed with the launches below, auto takes XLA
# there; impl="pallas" still runs the kernel.
XLA_FASTER_ON = frozenset({"gpu"})
# The GPU's default launches (Triton), per pass, from the same H200 sweep at d=4096. The
# forward ran best with small blocks: 4 rows × 4 warps at 117% of copy (8 rows at 87%). The
# backward needs the opposite: small blocks write one partial sum of dscale per block, and
# whole wide blocks likely spill registers (8 rows at 16%); blocks of 64 rows walked one
# 4096-wide row at a time ran forward+backward at 102%. So the forward takes about 16K
# elements per program, and the backward 64 rows walked about 4K elements at a time.
GPU_FORWARD_ELEMENTS = 16384
GPU_BACKWARD_ROWS = 64
GPU_BACKWARD_STEP_ELEMENTS = 4096
WARPS = 4


def _fit(rows: int, n: int) -> int:
    """rows rounded down to a power of two, halved while half of it still covers all n rows."""
    rows = 1 << (max(rows, 1).bit_length() - 1)
    while rows > 1 and rows // 2 >= n:
        rows //= 2
    return rows


def block_rows_for(n: int, d: int) -> int:
    """Rows per program: a power of two (Triton) and a multiple of 8 (TPU sublanes), about
    64 KiB of float32 per block, never far more rows than there are."""
    return max(8, _fit(max(8, min(256, 16384 // max(d, 1))), n))


def default_launches(n: int, d: int, backend: str) -> tuple[tuple, tuple]:
    """(forward, backward) launches, each (rows per program, warps, rows per step), when the
    caller sets none: on a GPU each pass its own (GPU_FORWARD_ELEMENTS and GPU_BACKWARD_*),
    elsewhere (TPU, the interpreter) one block of block_rows_for rows for both."""
    if backend != "gpu":
        rows = block_rows_for(n, d)
        return (rows, WARPS, rows), (rows, WARPS, rows)
    forward = _fit(min(256, GPU_FORWARD_ELEMENTS // d), n)
    backward = _fit(GPU_BACKWARD_ROWS, n)
    step = min(backward, max(1, GPU_BACKWARD_STEP_ELEMENTS // d))  # d is a power of two
    return (forward, WARPS, forward), (backward, WARPS, step)


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
               impl: str = "auto", block_rows: int | None = None, num_warps: int | None = None,
               step_rows: int | None = None):
    """norm(x + residual) · scale + bias over the last axis; returns y, or (y, x + residual).

    kind "rms" (RMSNorm, bias allowed but unusual) or "layer" (LayerNorm). Statistics run in
    float32; y and h keep x's dtype. impl: see jaxlab.kernels ("auto" on a GPU takes XLA:
    this kernel's forward+backward measured slower there, XLA_FASTER_ON). block_rows (rows
    per program, a power of two), num_warps and step_rows (rows a program handles at a time
    as it walks its block, a power of two up to block_rows; with block_rows, default the whole
    block) tune the kernel; a setting given applies to both passes, and those not given take
    `default_launches`.
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
    launches = default_launches(n, d, dispatch.backend())
    if block_rows is not None:
        launches = [(block_rows, None, step_rows or block_rows)] * 2
    elif step_rows is not None:
        launches = [(block, None, step_rows) for block, _, _ in launches]
    launches = tuple((block, num_warps or WARPS, step) for block, _, step in launches)
    for block, _, step in launches:
        _check_step(block, step, x.dtype)
    return _fused(x, scale, bias, residual, kind, eps, path == "interpret", launches)


def _check_step(block: int, step: int, dtype) -> None:
    if step > block:
        raise ConfigError(f"step_rows {step} is more than block_rows {block}; valid: a "
                          f"power of two up to {block}")
    sublanes = 8 * max(1, 4 // dtype.itemsize)  # a TPU tile's rows: 8 float32, 16 bfloat16
    if dispatch.backend() == "tpu" and step % sublanes:
        raise ConfigError(f"step_rows {step} is not a multiple of {sublanes}, the TPU "
                          f"tile's rows for {dtype}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _fused(x, scale, bias, residual, kind, eps, interpret, launches):
    return _fused_fwd(x, scale, bias, residual, kind, eps, interpret, launches)[0]


def _rows(a) -> jax.Array:
    return a.reshape(-1, a.shape[-1])


def _pad_rows(a, n_pad: int) -> jax.Array:
    # Padded rows are zeros: their statistics stay finite and they are sliced away.
    return jnp.pad(a, ((0, n_pad - a.shape[0]), (0, 0)))


def _fused_fwd(x, scale, bias, residual, kind, eps, interpret, launches):
    """launches: (forward, backward), each (rows per program, warps, rows per step)."""
    n, d = _rows(x).shape
    (block, warps, step), (backward_block, _, _) = launches
    # both blocks are powers of two: padded to the larger, the rows split into either
    n_pad = -(-n // max(block, backward_block)) * max(block, backward_block)
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


def _fused_bwd(kind, eps, interpret, launches, saved, cotangent):
    h, scale, mean, rstd, bias, residual = saved
    dy, dh = cotangent if residual is not None else (cotangent, None)
    n = _rows(dy).shape[0]
    n_pad = h.shape[0]
    block, warps, step = launches[1]
    dx, dscale, dbias = pallas.backward(
        h, _pad_rows(_rows(dy), n_pad), None if dh is None else _pad_rows(_rows(dh), n_pad),
        scale, mean, rstd, kind=kind, block_rows=block, num_warps=warps, step_rows=step,
        interpret=interpret, lane_dense=rstd.ndim == 2)  # the layout the forward chose
    dx = dx[:n].reshape(dy.shape)
    return (dx, dscale.astype(scale.dtype), None if bias is None else dbias.astype(bias.dtype),
            None if residual is None else dx)


_fused.defvjp(_fused_fwd, _fused_bwd)
