"""Macaron blocks: parameter parity, the zero-first-FFN equivalence, placements, attention kinds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.config_defaults import transformer
from jaxlab.errors import ConfigError
from jaxlab.layers.blocks import Block
from jaxlab.layers.macaron import MacaronBlock, make_block
from jaxlab.models import build
from jaxlab.registry import ATTENTION


def count(module):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def small_cfg(**overrides):
    return transformer(**{**dict(width=16, depth=2, num_heads=2, max_len=16), **overrides})


@pytest.mark.parametrize("ffn", ["glu", "mlp"])
def test_half_width_macaron_has_the_standard_parameter_count_plus_one_norm(ffn):
    cfg = small_cfg(ffn=ffn, norm="layernorm", macaron_half_width=True)
    standard, macaron = Block(cfg, 1, rngs=nnx.Rngs(0)), MacaronBlock(cfg, 1, rngs=nnx.Rngs(0))
    assert count(macaron) == count(standard) + 2 * cfg.width  # one more LayerNorm (scale, bias)
    full = MacaronBlock(small_cfg(ffn=ffn, norm="layernorm"), 1, rngs=nnx.Rngs(0))
    assert count(full) > count(macaron)


def copy_weights(standard, macaron):
    """Macaron's attention and second FFN take the standard block's weights; FFN 1 outputs 0."""
    nnx.update(macaron.attention, nnx.state(standard.attention))
    nnx.update(macaron.ffn_out.sublayer.ffn, nnx.state(standard.ffn.sublayer))
    nnx.update(macaron.ffn_out.norm, nnx.state(standard.ffn.norm))
    down = macaron.ffn_in.sublayer.ffn.down
    down.kernel[...] = jnp.zeros_like(down.kernel[...])


@pytest.mark.parametrize("position", ["pre", "peri", "post"])
def test_zero_first_ffn_gives_a_standard_block_with_half_ffn_residual(position):
    cfg = small_cfg(norm="layernorm", norm_position=position)
    standard, macaron = Block(cfg, 1, rngs=nnx.Rngs(0)), MacaronBlock(cfg, 1, rngs=nnx.Rngs(1))
    copy_weights(standard, macaron)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 16)), jnp.float32)
    positions = jnp.broadcast_to(jnp.arange(8), (2, 8))

    def reference(x):
        if position == "post":  # a zero branch still passes through its post-norm
            x = macaron.ffn_in.norm(x)
        h = standard.attention(x, positions_bt=positions)
        ffn = standard.ffn
        if position == "pre":
            return h + 0.5 * ffn.sublayer(ffn.norm(h))
        if position == "peri":
            return h + ffn.out_norm(0.5 * ffn.sublayer(ffn.norm(h)))
        return ffn.norm(h + 0.5 * ffn.sublayer(h))

    ours = jax.jit(lambda x: macaron(x, positions_bt=positions))(x)
    np.testing.assert_allclose(ours, jax.jit(reference)(x), atol=1e-5)
    # With the first FFN live again the block differs.
    down = macaron.ffn_in.sublayer.ffn.down
    # (random, not constant: a layer norm would erase a feature-constant branch)
    down.kernel[...] = jax.random.normal(jax.random.key(0), down.kernel[...].shape)
    assert not np.allclose(macaron(x, positions_bt=positions), ours, atol=1e-3)


LM_KINDS = sorted(ATTENTION.names())


@pytest.mark.parametrize("kind", LM_KINDS)
def test_macaron_lm_runs_with_every_attention_kind(kind):
    cfg = small_cfg(block="macaron", attention=kind, diag_block=4, chunk_size=4, depth=1)
    model = build(cfg, nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 8)), jnp.int32)
    logits = jax.jit(lambda t: model(t))(tokens)
    assert logits.shape == (2, 8, 256) and np.all(np.isfinite(logits))
    assert all(isinstance(b, MacaronBlock) for b in model.blocks)


def test_macaron_vit_and_unknown_block():
    cfg = transformer(name="vit", width=16, depth=1, num_heads=2, causal=False, position="learned",
                      image_size=8, patch_size=2, channels=1, num_classes=10, max_len=16,
                      block="macaron", macaron_half_width=True)
    model = build(cfg, nnx.Rngs(0))
    assert isinstance(model.blocks[0], MacaronBlock)
    assert model(jnp.ones((2, 8, 8, 1))).shape == (2, 10)
    with pytest.raises(ConfigError, match="block kind 'sandwich'.*macaron"):
        make_block(small_cfg(block="sandwich"), 0, rngs=nnx.Rngs(0))


@pytest.mark.slow
def test_macaron_vit_trains_runlocal_on_an_8_device_mesh(tmp_path):
    from jaxlab import config as config_lib
    from jaxlab.train.loop import train
    config = config_lib.load("configs/vision/vit_digits.py:runlocal",
                             {"model.block": "macaron", "model.macaron_half_width": True,
                              "mesh": [("data", 4), ("fsdp", 2)]})
    summary = train(config, tmp_path / "run", progress=False, emit=lambda _: None)
    assert np.isfinite(summary["train_loss"]) and summary["valid_accuracy"] >= 0.0
