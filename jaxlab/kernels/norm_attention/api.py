"""fused_norm_attention(q, k, v, ...): the public op, with a custom VJP onto the Pallas kernels."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxlab.errors import ConfigError
from jaxlab.kernels import dispatch
from jaxlab.kernels.norm_attention import cudnn, mosaic_backward, mosaic_gpu, pallas
from jaxlab.kernels.norm_attention.reference import (NORMALIZERS, QK_NORMS,
                                                     fused_norm_attention_reference)
from jaxlab.kernels.tiles import LANES, lane_slab

OP = "fused_norm_attention"
GPU_KERNELS = ("auto", "triton", "mosaic")


# Mosaic's tiles are 8 sublanes × 128 lanes: keys run along the lanes of a score tile, so a
# TPU key block is a multiple of 128 and a query block a multiple of 8. 128 is TPU flash
# attention's smallest block; larger ones may be faster, but that was never measured.
TPU_BLOCK = 128


# GPU launch settings (block_q, block_k, warps, stages) of the forward and of the backward
# kernels by head dim, from the sweep on an H100 (benchmarks/RESULTS.md, bf16, causal, T=4096):
# up to 64 both passes are fastest at 128 × 64 with 4 warps; at 128 the forward at 128 × 128
# with 8 warps and the backward at 64 × 64 with 4. Blocks shrink to the sequence when shorter.
GPU_TILES = {64: ((128, 64, 4, 2), (128, 64, 4, 2)),
             128: ((128, 128, 8, 2), (64, 64, 4, 2))}
WIDE_TILES = ((64, 64, 8, 2), (64, 64, 8, 2))  # head dims above 128: unmeasured, kept small


def gpu_tiles(head_dim: int, q_len: int, k_len: int):
    """Default (forward, backward) launch settings for the GPU kernels."""
    tiles = next((t for d, t in sorted(GPU_TILES.items()) if head_dim <= d), WIDE_TILES)
    return tuple((block_for(q_len, bq), block_for(k_len, bk), warps, stages)
                 for bq, bk, warps, stages in tiles)


def block_for(length: int, largest: int = 64) -> int:
    """A power of two ≥ 16 (Triton's smallest dot), at most `largest`, near the length; on
    TPU always TPU_BLOCK."""
    if dispatch.backend() == "tpu":
        return TPU_BLOCK
    block = 16
    while block < min(length, largest):
        block *= 2
    return block


def unsupported(head_dim: int, block_q: int = 16, block_k: int = 16, q_len: int = 1,
                k_len: int = 1, itemsize: int = 4) -> str | None:
    """Why the Pallas kernel cannot take these sizes on this backend, or None if it can."""
    backend = dispatch.backend()
    if backend == "gpu" and (head_dim & (head_dim - 1) or head_dim < 16):
        return f"the Triton kernel needs a power-of-two head dim ≥ 16, got {head_dim}"
    if backend == "tpu":
        if block_q % 8 or block_k % 128:
            return (f"the TPU kernel needs block_q a multiple of 8 and block_k a multiple of "
                    f"128, got {block_q} and {block_k}")
        return dispatch.over_vmem("whole key/value or query sequences",
                                  _tpu_vmem_bytes(head_dim, block_q, block_k, q_len, k_len,
                                                  itemsize))
    return None


def _tpu_vmem_bytes(d: int, block_q: int, block_k: int, q_len: int, k_len: int,
                    itemsize: int) -> int:
    """About the VMEM the largest of the three kernels holds: the whole key/value (forward, dQ)
    or query/d out (dK/dV) sequence with its per-row values, tiles, double buffering and the
    float32 score tiles and accumulators."""
    tq, tk = _padded(q_len, block_q), _padded(k_len, block_k)
    slab = LANES * 4  # a lane-dense float32 per-row value
    whole = max(tk * (2 * d * itemsize + 2 * 8 * 4),   # k, v; key mask and ids, 8 sublanes
                tq * (2 * d * itemsize + 4 * slab))    # q, d out; ids, factor, statistic, δ
    tiles = (block_q + block_k) * (3 * d * itemsize + 4 * slab)
    scratch = 4 * block_q * block_k * 4 + 4 * max(block_q, block_k) * d * 4
    return 2 * (whole + tiles) + scratch


def fused_norm_attention(q, k, v, q_scale=None, k_scale=None, key_mask_bs=None, *,
                         qk_norm: str | None = None, normalizer: str = "softmax",
                         causal: bool = False, sm_scale: float | None = None, eps: float = 1e-6,
                         impl: str = "auto", block_q: int | None = None,
                         block_k: int | None = None, segment_ids=None,
                         num_warps: int | None = None, num_stages: int = 2,
                         length_scale: bool = False,
                         backward_tiles: tuple[int, int, int | None, int] | None = None,
                         gpu_kernel: str = "auto"):
    """Attention whose q and k are RMS/Layer-normalized over head_dim inside the kernel.

    q [b, t, h, d]; k, v [b, s, h_kv, d] (GQA when h_kv < h); q_scale, k_scale [d] (the norms'
    gains, default 1); key_mask_bs [b, s], True where a key may be seen; segment_ids None, one
    int array [b, t] (self-attention, t == s) or a pair (query ids [b, t], key ids [b, s]):
    a query sees only keys of its own segment (packed sequences); `normalizer` softmax
    or softplus (ℓ1-normalized Softplus scores; pass any length-dependent factor in sm_scale,
    default d^-1/2). length_scale also multiplies row i's logits by log(d)·log(n_i), n_i the
    keys it sees (LSSA's scale: with qk_norm="rms", sm_scale=1/d and normalizer="softplus" this
    is LSSA without re-weighting; not with segment_ids). Rows that see no key return 0.
    impl: see jaxlab.kernels; on a GPU, "auto" hands plain 16-bit softmax attention (no key
    mask, segments or length scale) to XLA's norms plus cuDNN, which measured faster than our
    kernel (cudnn.py); last_path then says "cudnn". block_q, block_k, num_warps and
    num_stages tune the GPU kernel; backward_tiles = (block_q, block_k, num_warps,
    num_stages) tunes the two backward kernels apart (default: the forward's). With none of
    the first three given, a GPU takes the measured GPU_TILES for the head dim (both passes);
    elsewhere blocks are up to 64. On TPU the blocks default to 128 and must be multiples of 8
    (queries) and 128 (keys). gpu_kernel="mosaic" runs both passes as the Hopper Mosaic GPU
    kernels of mosaic_gpu.py and mosaic_backward.py (block_k and num_stages tune the forward),
    with impl="interpret" in Mosaic GPU's interpreter: 16-bit, head dim 64 or 128, no segment
    ids, jax ≥ 0.11; last_path then says "mosaic" (or "interpret"). gpu_kernel="triton" runs
    the Triton-lowered kernels of pallas.py. gpu_kernel="auto" takes Mosaic GPU on a Hopper
    GPU (sm_90) when it takes the inputs and no Triton launch setting (block_q, num_warps,
    backward_tiles) is given, else Triton; on an H100 the Mosaic kernels ran fwd+bwd at about
    1.3–1.5× the Triton kernel's TFLOP/s (benchmarks/RESULTS.md), still below the cuDNN pair
    that impl="auto" prefers where it applies.
    """
    if normalizer not in NORMALIZERS:
        raise ConfigError(f"normalizer {normalizer!r} is unknown; valid: {', '.join(NORMALIZERS)}")
    if qk_norm not in QK_NORMS:
        raise ConfigError(f"qk_norm {qk_norm!r} is unknown; valid: None, rms, layer")
    b, t, h, d = q.shape
    s_len, h_kv = k.shape[1], k.shape[2]
    if h % h_kv:
        raise ConfigError(f"query heads {h} must be a multiple of key/value heads {h_kv}")
    if gpu_kernel not in GPU_KERNELS:
        raise ConfigError(f"gpu_kernel {gpu_kernel!r} is unknown; valid: "
                          f"{', '.join(GPU_KERNELS)}")
    mosaic_block_k = block_k or mosaic_gpu.FORWARD_BLOCK_K
    triton_tuned = (block_q, num_warps, backward_tiles) != (None, None, None)
    if dispatch.backend() == "gpu" and (block_q, block_k, num_warps) == (None, None, None):
        (block_q, block_k, num_warps, num_stages), default_bwd = gpu_tiles(d, t, s_len)
        backward_tiles = backward_tiles or default_bwd
    block_q, block_k = block_q or block_for(t), block_k or block_for(s_len)
    bwd_q, bwd_k, bwd_warps, bwd_stages = backward_tiles or (block_q, block_k, num_warps,
                                                             num_stages)
    why = (unsupported(d, block_q, block_k, t, s_len, q.dtype.itemsize)
           or unsupported(d, bwd_q, bwd_k, t, s_len, q.dtype.itemsize))
    try:
        path = dispatch.resolve(OP, impl, why)
    except dispatch.Unsupported as error:
        raise ConfigError(str(error)) from None
    for name, fwd, bwd in (("block_q", block_q, bwd_q), ("block_k", block_k, bwd_k)):
        if max(fwd, bwd) % min(fwd, bwd):
            raise ConfigError(f"the backward {name} {bwd} and the forward's {fwd} must divide "
                              f"one another (time is padded to the larger)")
    segments = _segment_pair(segment_ids, b, t, s_len)
    if length_scale and segments is not None:
        raise ConfigError("length_scale with segment_ids is not supported: the kernel counts "
                          "visible keys from the key mask and causality only")
    logit_scale = float(d ** -0.5 if sm_scale is None else sm_scale)
    ones = jnp.ones((d,), jnp.float32)
    keys = jnp.ones((b, s_len)) if key_mask_bs is None else key_mask_bs
    row_scale = _length_scales(keys, d, t, causal) if length_scale else None
    if impl == "auto" and path == "pallas" and gpu_kernel != "mosaic" and cudnn.takes(
            q, k, v, key_mask_bs, normalizer=normalizer, causal=causal, segments=segments,
            length_scale=length_scale):
        try:
            out = cudnn.norm_attention(q, k, v, q_scale, k_scale, qk_norm=qk_norm,
                                       causal=causal, sm_scale=sm_scale, eps=eps)
        except (ValueError, NotImplementedError, RuntimeError):
            pass  # cuDNN refused these shapes or this GPU: our kernel below
        else:
            dispatch.record(OP, "cudnn")
            return out
    why_not = (mosaic_gpu.unsupported(q, k, mosaic_block_k, num_stages)
               or _mosaic_refuses(segments, path))
    if gpu_kernel == "mosaic" and path != "xla" and why_not:
        raise ConfigError(f"gpu_kernel='mosaic': {why_not}")
    mosaic = path != "xla" and (gpu_kernel == "mosaic" or (
        gpu_kernel == "auto" and path == "pallas" and why_not is None and not triton_tuned
        and mosaic_gpu.hopper()))
    if mosaic:
        call = MosaicCall(qk_norm=qk_norm, normalizer=normalizer, causal=causal,
                          sm_scale=logit_scale, eps=eps, block_k=mosaic_block_k,
                          stages=num_stages)
        key_mask = None if key_mask_bs is None else key_mask_bs.astype(jnp.float32)
        if path == "pallas":
            dispatch.record(OP, "mosaic")
        return _mosaic_attention(q, k, v, ones if q_scale is None else q_scale,
                                 ones if k_scale is None else k_scale, key_mask, row_scale,
                                 call, path == "interpret")
    if path == "xla":
        return fused_norm_attention_reference(
            q, k, v, q_scale, k_scale, key_mask_bs, qk_norm=qk_norm, normalizer=normalizer,
            causal=causal, sm_scale=sm_scale, eps=eps, segment_ids=segments,
            length_scale=length_scale)
    # The passes' blocks divide one another, so padding to the larger suits both.
    pad_q, pad_k = max(block_q, bwd_q), max(block_k, bwd_k)
    g = pallas.Geometry(block_q=block_q, block_k=block_k,
                        q_len=t, k_len=s_len, group=h // h_kv, causal=causal,
                        normalizer=normalizer, qk_norm=qk_norm,
                        sm_scale=logit_scale, eps=eps, segmented=segments is not None,
                        length_scaled=length_scale,
                        num_warps=num_warps, num_stages=num_stages,
                        lane_dense=dispatch.lane_dense(),
                        key_masked=key_mask_bs is not None or s_len % pad_k != 0)
    g_bwd = dataclasses.replace(g, block_q=bwd_q, block_k=bwd_k, num_warps=bwd_warps,
                                num_stages=bwd_stages)
    q_ids, k_ids = segments or (jnp.zeros((b, t)), jnp.zeros((b, s_len)))
    row_scale = jnp.ones((b, t)) if row_scale is None else row_scale
    # Masks and ids travel as float32 rows (ids below 2**24 are exact) so that the custom VJP
    # can hand back ordinary zero cotangents for them.
    rows = lambda x, n: jnp.pad(x.astype(jnp.float32), ((0, 0), (0, _padded(x.shape[1], n)
                                                                  - x.shape[1])))
    return _attention(q, k, v, ones if q_scale is None else q_scale,
                      ones if k_scale is None else k_scale,
                      (rows(keys, pad_k), rows(q_ids, pad_q), rows(k_ids, pad_k),
                       rows(row_scale, pad_q)), (g, g_bwd), path == "interpret")


def _mosaic_refuses(segments, path: str) -> str | None:
    """What the Mosaic GPU kernels lack that this call asks for, or None."""
    if segments is not None:
        return "it takes no segment ids"
    if path == "pallas" and dispatch.backend() != "gpu":
        return f"it runs on a GPU (or with impl='interpret'), this backend is {dispatch.backend()}"
    return None


def _layouts(masks, g):
    """The padded rows (key mask [b, s], query ids [b, t], key ids [b, s], logit factor [b, t])
    as the kernels of geometry g read them: as they are, or on TPU per-key values as
    [b, key blocks, 1, block_k], a row of lanes per key block, and per-query values as
    lane-dense [b, t, 128] slabs (see pallas.py)."""
    if not g.lane_dense:
        return masks
    per_key = lambda x: x.reshape(x.shape[0], x.shape[1] // g.block_k, 1, g.block_k)
    keys, q_ids, k_ids, row_scale = masks
    return per_key(keys), lane_slab(q_ids), per_key(k_ids), lane_slab(row_scale)


def _length_scales(keys_bs, head_dim: int, t: int, causal: bool):
    """log(d)·log(n_i) per query [b, t], n_i the unmasked keys query i sees (causality
    end-aligned: query i sees keys up to i + s − t)."""
    keys_bs = keys_bs.astype(jnp.float32)
    s_len = keys_bs.shape[1]
    if causal:
        last_key = jnp.arange(t) + (s_len - t)
        seen = jnp.cumsum(keys_bs, axis=1)[:, jnp.clip(last_key, 0, s_len - 1)]
        n_visible = jnp.where(last_key >= 0, seen, 0.0)
    else:
        n_visible = jnp.broadcast_to(keys_bs.sum(1, keepdims=True), (keys_bs.shape[0], t))
    return jnp.log(float(head_dim)) * jnp.log(jnp.maximum(n_visible, 1.0))


def _segment_pair(segment_ids, b: int, t: int, s_len: int):
    """(query ids [b, t], key ids [b, s]) or None, with the shapes checked."""
    if segment_ids is None:
        return None
    if not isinstance(segment_ids, (tuple, list)):
        if t != s_len:
            raise ConfigError(f"one segment_ids array needs as many queries as keys, got "
                              f"{t} and {s_len}; pass (query ids, key ids)")
        segment_ids = (segment_ids, segment_ids)
    q_ids, k_ids = segment_ids
    if q_ids.shape != (b, t) or k_ids.shape != (b, s_len):
        raise ConfigError(f"segment_ids shapes {q_ids.shape} and {k_ids.shape} must be "
                          f"{(b, t)} and {(b, s_len)}")
    return q_ids, k_ids


def _padded(n: int, block: int) -> int:
    return -(-n // block) * block


def _to_kernel_layout(x, length):
    """[b, t, h, d] -> [b, h, length, d] with zero rows at the end."""
    x = jnp.swapaxes(x, 1, 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)))


def _from_kernel_layout(x, length):
    return jnp.swapaxes(x[:, :, :length], 1, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _attention(q, k, v, q_scale, k_scale, masks, geometries, interpret):
    return _attention_fwd(q, k, v, q_scale, k_scale, masks, geometries, interpret)[0]


def _attention_fwd(q, k, v, q_scale, k_scale, masks, geometries, interpret):
    """masks: (key validity, query segment ids, key segment ids, per-query logit factor),
    float32 rows padded to both passes' blocks; geometries: (forward's, backward's)."""
    g = geometries[0]
    tq, tk = masks[1].shape[1], masks[0].shape[1]
    qk, kk, vk = (_to_kernel_layout(q, tq), _to_kernel_layout(k, tk), _to_kernel_layout(v, tk))
    out, stat = pallas.forward(qk, kk, vk, *_layouts(masks, g), q_scale, k_scale, g=g,
                               interpret=interpret)
    return _from_kernel_layout(out, g.q_len), (qk, kk, vk, masks, q_scale, k_scale, out, stat)


def _attention_bwd(geometries, interpret, saved, dout):
    qk, kk, vk, masks, q_scale, k_scale, out, stat = saved
    g = geometries[1]
    dq, dk, dv, dqs, dks = pallas.backward(qk, kk, vk, *_layouts(masks, g), q_scale, k_scale,
                                           out, stat, _to_kernel_layout(dout, qk.shape[2]),
                                           g=g, interpret=interpret)
    return (_from_kernel_layout(dq, g.q_len), _from_kernel_layout(dk, g.k_len),
            _from_kernel_layout(dv, g.k_len), dqs.astype(q_scale.dtype),
            dks.astype(k_scale.dtype), jax.tree.map(jnp.zeros_like, masks))


_attention.defvjp(_attention_fwd, _attention_bwd)


@dataclasses.dataclass(frozen=True)
class MosaicCall:
    """The static settings of a call that runs the Mosaic GPU kernels."""
    qk_norm: str | None
    normalizer: str
    causal: bool
    sm_scale: float
    eps: float
    block_k: int
    stages: int

    def options(self):
        """The keyword arguments both passes share."""
        return dict(qk_norm=self.qk_norm, normalizer=self.normalizer, causal=self.causal,
                    sm_scale=self.sm_scale, eps=self.eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _mosaic_attention(q, k, v, q_scale, k_scale, key_mask, row_scale, call, interpret):
    """key_mask [b, s] float32 (1: seen) and row_scale [b, t] (logit factors) or None; both
    constants to the VJP."""
    return _mosaic_attention_fwd(q, k, v, q_scale, k_scale, key_mask, row_scale, call,
                                 interpret)[0]


def _mosaic_attention_fwd(q, k, v, q_scale, k_scale, key_mask, row_scale, call, interpret):
    out, stat = mosaic_gpu.forward(q, k, v, q_scale, k_scale, key_mask, row_scale,
                                   block_kv=call.block_k, stages=call.stages,
                                   interpret=interpret, **call.options())
    return out, (q, k, v, q_scale, k_scale, key_mask, row_scale, out, stat)


def _mosaic_attention_bwd(call, interpret, saved, dout):
    q, k, v, q_scale, k_scale, key_mask, row_scale, out, stat = saved
    dq, dk, dv, dqs, dks = mosaic_backward.backward(q, k, v, q_scale, k_scale, key_mask,
                                                    row_scale, out, stat, dout,
                                                    interpret=interpret, **call.options())
    zeros = lambda x: None if x is None else jnp.zeros_like(x)
    return (dq, dk, dv, dqs.astype(q_scale.dtype), dks.astype(k_scale.dtype), zeros(key_mask),
            zeros(row_scale))


_mosaic_attention.defvjp(_mosaic_attention_fwd, _mosaic_attention_bwd)
