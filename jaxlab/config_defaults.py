"""Shared config blocks that config files start from; each file overrides what it is about."""
from __future__ import annotations

import ml_collections

from jaxlab.train.mesh import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
    """Every group the trainer reads, with defaults that suit a small CPU run."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict()
    c.optim = ml_collections.ConfigDict(dict(
        name="adamw", lr=1e-3, schedule="warmup_cosine", warmup_steps=50, final_lr_fraction=0.1,
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, clip_norm=1.0, momentum=0.9))
    c.train = ml_collections.ConfigDict(dict(
        steps=1000, batch_size=32, grad_accum=1, loss="xent", z_loss=0.0,
        eval_every=250, eval_steps=4, nonfinite="halt", max_consecutive_skips=10))
    c.mesh = [("data", -1), ("fsdp", 1), ("tensor", 1)]
    c.sharding = ml_collections.ConfigDict(dict(rules=list(DEFAULT_RULES), overrides=[]))
    c.ckpt = ml_collections.ConfigDict(dict(every=500, keep=3, async_save=True,
                                            allow_config_change=False))
    # diagnostics_every: per-layer depth diagnostics (jaxlab.analysis.depth) every N steps; 0 = off.
    c.log = ml_collections.ConfigDict(dict(every=50, tensorboard=True, sample=True,
                                           diagnostics_every=0))
    return c


def transformer(**overrides) -> ml_collections.ConfigDict:
    """A Transformer model block; `name` picks the model ("lm" or "vit")."""
    model = ml_collections.ConfigDict(dict(
        name="lm", width=128, depth=4, num_heads=4, num_kv_heads=0, ffn="glu", ffn_mult=4.0,
        activation="silu", attention="softmax", causal=True, norm="rmsnorm", norm_position="pre",
        position="rope", rope_base=10000.0, max_len=256, vocab_size=256, tie_embeddings=True,
        dtype="float32", remat="none",
        # scan_layers: the decoder LM's identical blocks as one lax.scan over stacked parameters
        # (compile time flat in depth; params under blocks/layers gain a leading layer axis).
        scan_layers=False,
        # Pallas kernels (jaxlab/kernels): xla, auto (Pallas on GPU/TPU), interpret (tests).
        kernels="xla",
        # Softmax and LSSA attention's GPU kernels when `kernels` runs them: auto (mosaic on
        # a Hopper GPU where it takes the inputs, else triton), triton, or mosaic (the Hopper
        # Mosaic GPU kernels: 16-bit, head dim 64 or 128; jax >= 0.11).
        attention_gpu_kernel="auto",
        # Block kind (layers/macaron.py); "standard" keeps attention → FFN.
        block="standard", macaron_half_width=False,
        # KAN family FFN kinds kan, grkan, polyrelu, polynorm (layers/kan.py).
        kan_basis="bspline", kan_grid_size=5, kan_order=3, kan_grid_bound=2.0,
        grkan_groups=8, grkan_init="gelu", polycom_order=3,
        # Normalization family (layers/norms.py, layers/blocks.py); defaults keep plain Pre-RMSNorm.
        norm_affine=True, mix_alpha=0.25, mix_post_layers=-1, layernorm_scaling=False,
        qk_norm="", qk_norm_affine=True, sigma_reparam=False,
        prepbn_warmup_steps=0, prepbn_decay_steps=1000, prepbn_r0=1.0,
        # Attention family (layers/attention*.py, layers/linear_attention.py); defaults keep softmax.
        attention_schedule="", attention_softcap=0.0, linear_form="chunked",
        linear_feature_map="elu1", linear_normalize=True, linear_output_norm=False, chunk_size=64,
        softplus_reweight_p=1.0, softplus_reweight_shift=True, diag_block=64, sla_kernel=5))
    model.update(overrides)
    return model


def shrink_for_cpu(config: ml_collections.ConfigDict, *, steps: int = 4, batch_size: int = 16,
                   **model_overrides) -> ml_collections.ConfigDict:
    """The `runlocal` variant of any config: a seconds-long smoke run with every feature on."""
    config.model.update(model_overrides)
    config.train.update(steps=steps, batch_size=batch_size, eval_every=steps // 2, eval_steps=1)
    config.optim.warmup_steps = 1
    config.ckpt.every = steps // 2
    config.log.update(every=1, sample=False)
    return config
