"""Kinds of the softmax family: same projections, rotary positions, qk-norm and KV cache as
`softmax`, different attention math (`attend`)."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.kernels.norm_attention import fused_norm_attention
from jaxlab.layers.attention import SoftmaxAttention
from jaxlab.ops import attention_variants as variants
from jaxlab.ops.attention import softmax_attention
from jaxlab.ops.softplus_attention import softplus_attention
from jaxlab.registry import ATTENTION


@ATTENTION.register("softplus")
class SoftplusAttention(SoftmaxAttention):
    """LSSA/LSSAR (see jaxlab/ops/softplus_attention.py). model.softplus_reweight_p is LSSAR's
    power (1 = no re-weighting, i.e. LSSA; the paper uses 15 beyond the training length) and
    may be changed at inference without retraining; model.softplus_reweight_shift keeps only
    the weights above uniform before the power, as the paper does."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.reweight_p = float(cfg.get("softplus_reweight_p", 1.0))
        if self.reweight_p <= 0:
            raise ConfigError(f"model.softplus_reweight_p={self.reweight_p} must be positive")
        self.reweight_shift = bool(cfg.get("softplus_reweight_shift", True))

    def attend(self, q, k, v, *, causal, key_mask_bs, position=None):
        if self.kernels != "xla" and position is None and self.reweight_p == 1.0:
            # LSSA as the fused kernel: rms-normalised q, k (√d × the unit vectors) with
            # sm_scale 1/d give cosine scores, times log d · log n per row.
            d = q.shape[-1]
            return fused_norm_attention(q, k, v, key_mask_bs=key_mask_bs, qk_norm="rms",
                                        normalizer="softplus", sm_scale=1.0 / d, causal=causal,
                                        length_scale=True, impl=self.kernels,
                                        gpu_kernel=self.gpu_kernel)
        return softplus_attention(q, k, v, causal=causal, key_mask_bs=key_mask_bs,
                                  reweight_p=self.reweight_p, reweight_shift=self.reweight_shift)


@ATTENTION.register("idw")
class InverseDistanceAttention(SoftmaxAttention):
    """Weights ∝ 1/(‖q_i − k_j‖ + ε): softmax of −log distance instead of scaled dot products."""

    def attend(self, q, k, v, *, causal, key_mask_bs, position=None):
        del position
        return variants.idw_attention(q, k, v, causal=causal, key_mask_bs=key_mask_bs)


@ATTENTION.register("diag_attention")
class DiagAttention(SoftmaxAttention):
    """TransNormer's DiagAttention: softmax inside non-overlapping blocks of model.diag_block
    tokens (default 64), nothing across blocks."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.block_size = int(cfg.get("diag_block", 64))
        if self.block_size < 1:
            raise ConfigError(f"model.diag_block={self.block_size} must be a positive integer")

    def attend(self, q, k, v, *, causal, key_mask_bs, position=None):
        if position is None:
            return variants.block_diagonal_attention(q, k, v, block_size=self.block_size,
                                                     causal=causal, key_mask_bs=key_mask_bs)
        # Decoding: the cache holds every position; keep only the new token's own block.
        same_block = jnp.arange(k.shape[1]) // self.block_size == position // self.block_size
        return softmax_attention(q, k, v, key_mask_bs=key_mask_bs & same_block[None])
