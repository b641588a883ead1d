"""Linear-attention kinds: `linear`, `norm_attention` (TransNormer), `sla` (SLAB) and `lsa`.

They share one shape: project, map q and k through a feature map, run
`jaxlab.ops.linear_attention` (causal) or its global form (bidirectional), optionally normalize
the output, project back. Decoding carries the running state instead of a KV cache, so any
number of tokens may be fed per decode call. These kinds use no rotary positions: a rotation
after the feature map would break the positivity the normalizer relies on.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.kernels import dispatch
from jaxlab.kernels.linear_attention import chunked_linear_attention
from jaxlab.kernels.linear_attention.reference import KERNEL_FEATURE_MAPS
from jaxlab.layers.attention import head_counts
from jaxlab.layers.common import dense, param
from jaxlab.layers.decode_cache import StateCache, require_cache
from jaxlab.ops import attention_variants as variants
from jaxlab.ops import linear_attention as ops
from jaxlab.registry import ATTENTION


def choice(cfg, key: str, default, valid) -> str:
    """model.<key> (or `default`), checked against the `valid` options."""
    value = cfg.get(key, default)
    if value not in valid:
        raise ConfigError(f"model.{key}={value!r} is not one of: {', '.join(valid)}")
    return value


class LinearAttentionBase(nnx.Module):
    """Subclasses set feature_map, normalize, scale, output_norm ('', 'head' or 'full')."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, feature_map: str, normalize: bool, scale: float,
                 output_norm: str, eps: float = 1e-6):
        heads, kv_heads, head_dim = head_counts(cfg)
        self.q = dense(cfg, cfg.width, heads * head_dim, axes=("embed", "heads"), rngs=rngs)
        self.k = dense(cfg, cfg.width, kv_heads * head_dim, axes=("embed", "heads"), rngs=rngs)
        self.v = dense(cfg, cfg.width, kv_heads * head_dim, axes=("embed", "heads"), rngs=rngs)
        self.o = dense(cfg, heads * head_dim, cfg.width, axes=("heads", "embed"), rngs=rngs)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.causal = bool(cfg.get("causal", True))
        self.feature_map = ops.FEATURE_MAPS[feature_map]
        self.form = choice(cfg, "linear_form", "chunked", ops.FORMS)
        self.chunk_size = int(cfg.get("chunk_size", 64))
        if self.chunk_size < 1:
            raise ConfigError(f"model.chunk_size={self.chunk_size} must be a positive integer")
        self.normalize, self.scale, self.eps = normalize, scale, eps  # static: no dicts in a graphdef
        self.output_norm = output_norm
        self.feature_map_name = feature_map
        self.kernels = dispatch.check_impl(cfg.get("kernels", "xla"))
        self.cache = None

    def uses_kernel(self, key_mask_bs, decode: bool) -> bool:
        """The chunked Pallas kernel covers causal training-time calls of the plain kind: its
        feature map runs inside the kernel, so padded keys (φ(0) ≠ 0) stay on the XLA path."""
        return (self.kernels != "xla" and type(self) is LinearAttention and self.causal
                and not decode and key_mask_bs is None and self.form == "chunked"
                and self.feature_map_name in KERNEL_FEATURE_MAPS)

    def kernel_call(self, x_btd: jax.Array) -> jax.Array:
        b, t, _ = x_btd.shape
        repeat = self.heads // self.kv_heads
        q = self.q(x_btd).reshape(b, t, self.heads, self.head_dim)
        k = jnp.repeat(self.k(x_btd).reshape(b, t, self.kv_heads, self.head_dim), repeat, axis=2)
        v = jnp.repeat(self.v(x_btd).reshape(b, t, self.kv_heads, self.head_dim), repeat, axis=2)
        out = chunked_linear_attention(q, k, v, feature_map=self.feature_map_name,
                                       normalize=self.normalize, scale=self.scale, eps=self.eps,
                                       output_norm=self.output_norm == "head",
                                       chunk_size=self.chunk_size, impl=self.kernels)
        return self.o(out.reshape(b, t, self.heads * self.head_dim).astype(x_btd.dtype))

    def op_kwargs(self) -> dict:
        return dict(normalize=self.normalize, scale=self.scale, eps=self.eps)

    def init_cache(self, batch: int, max_len: int) -> None:
        del max_len  # the state has a fixed size whatever the length
        self.cache = nnx.data(StateCache(batch, self.heads, self.head_dim, self.head_dim))

    def mix_values(self, out_bthd, v_bthd, *, decode: bool):
        """Hook for kinds that add a term computed from the values (SLA's convolution)."""
        del v_bthd, decode
        return out_bthd

    def __call__(self, x_btd: jax.Array, *, positions_bt: jax.Array | None = None,
                 key_mask_bs: jax.Array | None = None, decode: bool = False) -> jax.Array:
        del positions_bt
        if self.uses_kernel(key_mask_bs, decode):
            return self.kernel_call(x_btd)
        b, t, _ = x_btd.shape
        repeat = self.heads // self.kv_heads
        q = self.feature_map(self.q(x_btd).reshape(b, t, self.heads, self.head_dim))
        k = self.feature_map(self.k(x_btd).reshape(b, t, self.kv_heads, self.head_dim))
        v = self.v(x_btd).reshape(b, t, self.kv_heads, self.head_dim)
        k, v = jnp.repeat(k, repeat, axis=2), jnp.repeat(v, repeat, axis=2)
        if not self.causal:
            out = ops.linear_attention_global(q, k, v, key_mask_bs=key_mask_bs, **self.op_kwargs())
        else:
            if key_mask_bs is not None:  # padded keys add nothing to the state
                keep = key_mask_bs.astype(k.dtype)[:, :, None, None]
                k, v = k * keep, v * keep
            state = require_cache(self).state if decode else None
            out, final = ops.linear_attention(q, k, v, form=self.form, chunk_size=self.chunk_size,
                                              initial_state=state, **self.op_kwargs())
            if decode:
                self.cache.update(final)
        out = self.mix_values(out, v, decode=decode)
        if self.output_norm == "head":
            out = variants.rms_normalize(out)
        out = out.reshape(b, t, self.heads * self.head_dim)
        if self.output_norm == "full":
            out = variants.rms_normalize(out)
        return self.o(out.astype(x_btd.dtype))


@ATTENTION.register("linear")
class LinearAttention(LinearAttentionBase):
    """φ(q)·S / φ(q)·z kernel attention. model.linear_feature_map (elu1, relu, identity,
    softplus), model.linear_normalize (the denominator; without it outputs are scaled by
    1/√d), model.linear_output_norm (per-head RMS norm), model.linear_form, model.chunk_size."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        feature_map = choice(cfg, "linear_feature_map", "elu1", tuple(ops.FEATURE_MAPS))
        head_dim = head_counts(cfg)[2]
        super().__init__(cfg, rngs=rngs, feature_map=feature_map,
                         normalize=bool(cfg.get("linear_normalize", True)), scale=head_dim ** -0.5,
                         output_norm="head" if cfg.get("linear_output_norm", False) else "")


@ATTENTION.register("norm_attention")
class NormAttention(LinearAttentionBase):
    """TransNormer's NormAttention: RMSNorm(φ(Q)(φ(K)ᵀV)) over the full width, with no 1/√d
    scaling and no denominator (their cure for unbounded gradients). φ = model.linear_feature_map."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        feature_map = choice(cfg, "linear_feature_map", "elu1", tuple(ops.FEATURE_MAPS))
        super().__init__(cfg, rngs=rngs, feature_map=feature_map, normalize=False, scale=1.0,
                         output_norm="full")


@ATTENTION.register("lsa")
class LinearSelfAttention(LinearAttentionBase):
    """LSA (von Oswald et al. 2023): Σ_j (q_i·k_j) v_j / N with no feature map, softmax or
    denominator; N = model.max_len, the fixed 1/N of the paper's construction."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs, feature_map="identity", normalize=False,
                         scale=1.0 / cfg.max_len, output_norm="")


@ATTENTION.register("sla")
class SimplifiedLinearAttention(LinearAttentionBase):
    """SLAB's SLA: relu(q)·S / (relu(q)·z + 1e-6) plus a depthwise convolution of the values
    (kernel model.sla_kernel, default 5). Causal models use a causal 1-D convolution; a
    bidirectional model on a square token count (the ViT) uses a 2-D one over the grid.

    SLAB also adds a learned position embedding to k before the ReLU; our models carry their
    own positions, so it is left out."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs, feature_map="relu", normalize=True, scale=1.0,
                         output_norm="")
        self.kernel_size = int(cfg.get("sla_kernel", 5))
        if self.kernel_size < 1 or (not self.causal and self.kernel_size % 2 == 0):
            raise ConfigError(f"model.sla_kernel={self.kernel_size} must be a positive (and, for "
                              f"bidirectional models, odd) integer")
        channels = self.heads * self.head_dim
        kernel_shape = ((self.kernel_size, channels) if self.causal
                        else (self.kernel_size, self.kernel_size, channels))
        init = nnx.initializers.normal(stddev=1.0 / self.kernel_size)
        self.conv = param(rngs, init, kernel_shape, (None,) * (len(kernel_shape) - 1) + ("heads",))

    def init_cache(self, batch: int, max_len: int) -> None:
        del max_len
        self.cache = nnx.data(StateCache(batch, self.heads, self.head_dim, self.head_dim,
                                         conv_history=(self.kernel_size - 1, self.heads * self.head_dim)))

    def mix_values(self, out_bthd, v_bthd, *, decode: bool):
        b, t, h, d = v_bthd.shape
        v_btc = v_bthd.reshape(b, t, h * d).astype(jnp.float32)
        kernel = self.conv[...]
        if self.causal:
            history = require_cache(self).history if decode else None
            conv = variants.causal_depthwise_conv(
                v_btc, kernel, history_bkc=None if history is None else history[...])
            if decode and self.kernel_size > 1:
                window = jnp.concatenate([history[...], v_btc], axis=1)
                history[...] = window[:, window.shape[1] - (self.kernel_size - 1):]
        else:
            side = math.isqrt(t)
            if side * side != t:
                raise ValueError(f"bidirectional SLA needs a square token grid, got {t} tokens")
            conv = variants.grid_depthwise_conv(v_btc.reshape(b, side, side, h * d), kernel)
        return out_bthd + conv.reshape(b, t, h, d).astype(out_bthd.dtype)
