"""Layers: parameter axes, Dense, registries, norm placements, FFNs and attention wiring."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.config_defaults import transformer
from jaxlab.errors import ConfigError
from jaxlab.layers.attention import SoftmaxAttention
from jaxlab.layers.blocks import PostNorm, PreNorm
from jaxlab.layers.common import Dense, param
from jaxlab.layers.embed import Embed, LearnedPositions
from jaxlab.layers.ffn import GLU, MLP
from jaxlab.models import build
from jaxlab.ops.attention import apply_rope, softmax_attention
from jaxlab.registry import ATTENTION, FFN, NORM, NORM_POSITION, POSITION

WIDTH = 16


def small_cfg(**overrides):
    fields = dict(width=WIDTH, depth=1, num_heads=4, num_kv_heads=2, max_len=8, ffn_mult=2.0,
                  vocab_size=11)
    return transformer(**{**fields, **overrides})


def params_of(model):
    state = nnx.state(model, nnx.Param)
    return jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def randomize(variable, rng):
    variable[...] = jnp.asarray(rng.standard_normal(variable[...].shape), jnp.float32)


def silu(x):
    return x / (1 + np.exp(-x))


@pytest.mark.parametrize("cfg", [
    small_cfg(position="learned", norm="layernorm", tie_embeddings=False, ffn="mlp"),
    small_cfg(depth=1, name="vit", causal=False, position="learned", image_size=4, patch_size=2,
              channels=1, num_classes=10, max_len=4),
], ids=["lm", "vit"])
def test_every_param_has_one_axis_name_per_dim(cfg):
    leaves = params_of(nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0))))  # shapes only: fast
    assert len(leaves) > 10
    for variable in leaves:
        axes = variable.get_metadata()["axes"]
        assert isinstance(axes, tuple)
        assert len(axes) == len(variable.get_value().shape)
        assert all(a is None or isinstance(a, str) for a in axes)


def test_param_rejects_axes_of_wrong_length():
    with pytest.raises(ValueError, match="axes"):
        param(nnx.Rngs(0), nnx.initializers.zeros, (2, 3), ("embed",))


def test_dense_computes_x_at_kernel_plus_bias():
    rng = np.random.default_rng(0)
    dense = Dense(5, 3, axes=("embed", "mlp"), rngs=nnx.Rngs(0), use_bias=True)
    randomize(dense.bias, rng)
    x = rng.standard_normal((2, 4, 5)).astype(np.float32)
    want = x @ np.asarray(dense.kernel[...]) + np.asarray(dense.bias[...])
    np.testing.assert_allclose(dense(x), want, rtol=1e-5, atol=1e-5)
    assert dense.bias.get_metadata()["axes"] == ("mlp",)


def test_dense_bfloat16_computes_in_bfloat16_with_float32_params():
    dense = Dense(5, 3, axes=("embed", "mlp"), rngs=nnx.Rngs(0), use_bias=True, dtype=jnp.bfloat16)
    assert dense.kernel[...].dtype == jnp.float32 and dense.bias[...].dtype == jnp.float32
    x = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    y = dense(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), x @ np.asarray(dense.kernel[...]),
                               rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("registry,expected", [
    (ATTENTION, {"softmax"}), (FFN, {"mlp", "glu"}), (NORM, {"layernorm", "rmsnorm"}),
    (NORM_POSITION, {"pre", "post"}), (POSITION, {"rope", "learned", "none"})],
    ids=["attention", "ffn", "norm", "norm_position", "position"])
def test_registry_names_and_unknown_name_error(registry, expected):
    assert expected <= set(registry.names())
    assert all(name in registry for name in expected)
    with pytest.raises(ConfigError) as error:
        registry.get("nope")
    message = str(error.value)
    assert "'nope'" in message
    for name in registry.names():
        assert name in message


def numpy_layer_norm(x, scale, bias, eps=1e-6):
    centered = x - x.mean(-1, keepdims=True)
    return centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def make_sublayer(kind, cfg, rngs):
    return MLP(cfg, rngs=rngs) if kind == "mlp" else SoftmaxAttention(cfg, rngs=rngs)


@pytest.mark.parametrize("position", [PreNorm, PostNorm])
@pytest.mark.parametrize("sublayer_kind", ["mlp", "attention"])
def test_norm_positions_compose_norm_and_residual(position, sublayer_kind):
    cfg = small_cfg(norm="layernorm")
    rng = np.random.default_rng(2)
    wrapped = position(make_sublayer(sublayer_kind, cfg, nnx.Rngs(1)), cfg, 0, rngs=nnx.Rngs(2))
    randomize(wrapped.norm.scale, rng)
    randomize(wrapped.norm.bias, rng)
    scale, bias = np.asarray(wrapped.norm.scale[...]), np.asarray(wrapped.norm.bias[...])
    x = rng.standard_normal((2, 5, WIDTH)).astype(np.float32)
    kwargs = {} if sublayer_kind == "mlp" else {"positions_bt": np.tile(np.arange(5), (2, 1))}
    f = lambda h: np.asarray(wrapped.sublayer(jnp.asarray(h, jnp.float32), **kwargs))
    if position is PreNorm:
        want = x + f(numpy_layer_norm(x, scale, bias))
    else:
        want = numpy_layer_norm(x + f(x), scale, bias)
    np.testing.assert_allclose(wrapped(x, **kwargs), want, rtol=1e-4, atol=1e-4)
    assert position.final_norm is (position is PreNorm)


def test_glu_is_down_of_silu_gate_times_up():
    glu = GLU(small_cfg(), rngs=nnx.Rngs(3))
    x = np.random.default_rng(4).standard_normal((2, 3, WIDTH)).astype(np.float32)
    gate, up, down = (np.asarray(d.kernel[...]) for d in (glu.gate, glu.up, glu.down))
    assert gate.shape == up.shape == (WIDTH, 2 * WIDTH) and down.shape == (2 * WIDTH, WIDTH)
    want = (silu(x @ gate) * (x @ up)) @ down
    np.testing.assert_allclose(glu(x), want, rtol=1e-4, atol=1e-5)


def test_mlp_is_down_of_act_up():
    mlp = MLP(small_cfg(ffn="mlp", activation="relu"), rngs=nnx.Rngs(5))
    x = np.random.default_rng(6).standard_normal((2, 3, WIDTH)).astype(np.float32)
    want = np.maximum(x @ np.asarray(mlp.up.kernel[...]), 0) @ np.asarray(mlp.down.kernel[...])
    np.testing.assert_allclose(mlp(x), want, rtol=1e-4, atol=1e-5)


def test_unknown_activation_raises_config_error():
    with pytest.raises(ConfigError, match="silu"):
        MLP(small_cfg(activation="swish2"), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("position", ["rope", "learned"])
def test_attention_layer_wires_projections_rope_and_gqa(position):
    cfg = small_cfg(position=position)
    attn = SoftmaxAttention(cfg, rngs=nnx.Rngs(7))
    x = np.random.default_rng(8).standard_normal((2, 5, WIDTH)).astype(np.float32)
    positions = np.tile(np.arange(5), (2, 1))
    kernel = lambda d: np.asarray(d.kernel[...])
    q = (x @ kernel(attn.q)).reshape(2, 5, 4, 4)
    k = (x @ kernel(attn.k)).reshape(2, 5, 2, 4)
    v = (x @ kernel(attn.v)).reshape(2, 5, 2, 4)
    if position == "rope":
        q, k = apply_rope(q, positions), apply_rope(k, positions)
    want = np.asarray(softmax_attention(q, k, v, causal=True)).reshape(2, 5, WIDTH) @ kernel(attn.o)
    np.testing.assert_allclose(attn(x, positions_bt=positions), want, rtol=1e-4, atol=1e-5)


def test_embed_lookup_tied_head_and_learned_positions():
    embed = Embed(11, WIDTH, rngs=nnx.Rngs(9))
    table = np.asarray(embed.table[...])
    ids = np.array([[0, 3, 10]])
    np.testing.assert_array_equal(embed(ids), table[ids])
    x = np.random.default_rng(10).standard_normal((1, 3, WIDTH)).astype(np.float32)
    np.testing.assert_allclose(embed.attend(x), x @ table.T, rtol=1e-5, atol=1e-6)

    learned = LearnedPositions(small_cfg(), rngs=nnx.Rngs(11))
    positions = np.array([[2, 0, 7]])
    np.testing.assert_allclose(learned(x, positions), x + np.asarray(learned.table[...])[positions],
                               rtol=1e-6)
