"""Norm placements: Mix-LN's limits, LayerNorm Scaling, Peri-LN's scale robustness."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.config_defaults import transformer
from jaxlab.errors import ConfigError
from jaxlab.layers.blocks import (Block, PeriNorm, PostNorm, PreNorm, needs_final_norm,
                                  num_post_layers)
from jaxlab.layers.attention import SoftmaxAttention
from jaxlab.layers.ffn import MLP
from jaxlab.models import build

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 7)))


def cfg(**kw):
    base = dict(width=16, depth=4, num_heads=2, vocab_size=11, max_len=8, ffn_mult=2.0,
                norm="layernorm")
    return transformer(**{**base, **kw})


def logits(c, seed=3):
    return np.asarray(build(c, nnx.Rngs(seed))(TOKENS))


def test_mix_alpha_zero_is_bit_identical_to_pre_and_one_to_post():
    np.testing.assert_array_equal(logits(cfg(norm_position="mix", mix_alpha=0.0)),
                                  logits(cfg(norm_position="pre")))
    np.testing.assert_array_equal(logits(cfg(norm_position="mix", mix_alpha=1.0)),
                                  logits(cfg(norm_position="post")))


def test_mix_puts_post_norm_in_the_first_floor_alpha_layers():
    model = build(cfg(norm_position="mix", mix_alpha=0.6), nnx.Rngs(0))  # ⌊0.6·4⌋ = 2
    kinds = [(type(b.attention), type(b.ffn)) for b in model.blocks]
    assert kinds == [(PostNorm, PostNorm)] * 2 + [(PreNorm, PreNorm)] * 2
    assert model.final_norm is not None
    assert num_post_layers(cfg(norm_position="mix")) == 1  # default α = 0.25
    assert num_post_layers(cfg(norm_position="mix", mix_post_layers=3)) == 3
    assert not needs_final_norm(cfg(norm_position="mix", mix_alpha=1.0))
    with pytest.raises(ConfigError, match="mix_alpha=1.5"):
        num_post_layers(cfg(mix_alpha=1.5))


def block_output(c, layer_index, x, seed=1):
    block = Block(c, layer_index, rngs=nnx.Rngs(seed))
    return block, np.asarray(block(x, positions_bt=jnp.tile(jnp.arange(x.shape[1]), (2, 1))))


@pytest.mark.parametrize("position", ["pre", "peri", "mix"])
def test_layernorm_scaling_layer_one_equals_unscaled(position):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 16)), jnp.float32)
    _, scaled = block_output(cfg(norm_position=position, mix_alpha=0.0, layernorm_scaling=True),
                             0, x)
    _, plain = block_output(cfg(norm_position=position, mix_alpha=0.0), 0, x)
    np.testing.assert_array_equal(scaled, plain)


def test_layernorm_scaling_equals_norm_gain_one_over_sqrt_depth():
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 16)), jnp.float32)
    for index in (1, 3):
        block, scaled = block_output(cfg(norm="rmsnorm", layernorm_scaling=True), index, x)
        assert block.attention.scale == block.ffn.scale == 1 / np.sqrt(index + 1)
        plain = Block(cfg(norm="rmsnorm"), index, rngs=nnx.Rngs(1))
        for wrapper in (plain.attention, plain.ffn):  # RMSNorm with γ = 1/√ℓ
            wrapper.norm.scale[...] = jnp.full((16,), 1 / np.sqrt(index + 1), jnp.float32)
        got = plain(x, positions_bt=jnp.tile(jnp.arange(5), (2, 1)))
        np.testing.assert_allclose(scaled, got, rtol=1e-5, atol=1e-6)
        assert not np.allclose(scaled, block_output(cfg(norm="rmsnorm"), index, x)[1])


@pytest.mark.parametrize("sublayer", ["mlp", "attention"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_peri_output_is_unchanged_when_sublayer_output_is_scaled_by_100(sublayer, norm):
    c = cfg(norm=norm)
    module = MLP(c, rngs=nnx.Rngs(0)) if sublayer == "mlp" else SoftmaxAttention(c, rngs=nnx.Rngs(0))
    wrapped = PeriNorm(module, c, 0, rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 16)), jnp.float32)
    kwargs = {} if sublayer == "mlp" else {"positions_bt": jnp.tile(jnp.arange(5), (2, 1))}
    before = np.asarray(wrapped(x, **kwargs))
    projection = module.down if sublayer == "mlp" else module.o
    projection.kernel[...] *= 100.0
    np.testing.assert_allclose(wrapped(x, **kwargs), before, rtol=1e-5, atol=1e-5)
    # A pre-norm wrapper around the same sublayer is not protected.
    pre = PreNorm(module, c, 0, rngs=nnx.Rngs(1))
    scaled = np.asarray(pre(x, **kwargs))
    projection.kernel[...] /= 100.0
    assert not np.allclose(pre(x, **kwargs), scaled, atol=1e-2)


def test_peri_normalizes_embeddings_once_and_keeps_the_final_norm():
    model = build(cfg(norm_position="peri"), nnx.Rngs(0))
    assert model.blocks[0].embedding_norm is not None
    assert all(b.embedding_norm is None for b in model.blocks[1:])
    assert model.final_norm is not None
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 5, 16)) * 7 + 3, jnp.float32)
    block = model.blocks[0]
    pos = jnp.tile(jnp.arange(5), (2, 1))
    want = block.ffn(block.attention(block.embedding_norm(x), positions_bt=pos))
    np.testing.assert_allclose(block(x, positions_bt=pos), want, rtol=1e-6)
    # Each residual increment is an output norm: mean zero, unit variance at init.
    increment = np.asarray(block.attention(x, positions_bt=pos) - x)
    np.testing.assert_allclose(increment.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(increment.var(-1), 1.0, rtol=1e-3)
