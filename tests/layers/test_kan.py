"""KANLinear, group-rational and PolyCom layers and their FFN kinds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.config_defaults import transformer
from jaxlab.errors import ConfigError
from jaxlab.layers import GroupRational, KANLinear
from jaxlab.layers.kan import GroupRationalFFN
from jaxlab.models import build
from jaxlab.ops import kan as kan_ops


def count(module):
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("basis,bases", [("bspline", 5 + 3), ("rbf", 5), ("chebyshev", 6), ("fourier", 10)])
def test_parameter_count_formula(basis, bases):
    layer = KANLinear(4, 3, basis=basis, grid_size=5, rngs=nnx.Rngs(0))
    assert layer.num_bases() == bases
    assert count(layer) == 3 * 4 * (bases + 2)
    assert count(KANLinear(4, 3, basis=basis, base_activation=None, standalone_spline_scaler=False,
                           rngs=nnx.Rngs(0))) == 3 * 4 * bases


def relative_change(before, after):
    return float(jnp.linalg.norm(after - before) / jnp.linalg.norm(before))


def uniform_samples(seed, n=1000, dim=3):
    return jax.random.uniform(jax.random.key(seed), (n, dim), minval=-1, maxval=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_update_grid_keeps_the_function(seed):
    layer = KANLinear(3, 4, grid_size=5, rngs=nnx.Rngs(seed))
    x = uniform_samples(seed)
    before, grid_before = layer(x), layer.grid[...]
    layer.update_grid(x)
    assert not np.allclose(layer.grid[...], grid_before)  # the knots did move
    assert relative_change(before, layer(x)) < 1e-3


@pytest.mark.parametrize("basis,new_size,tol", [("bspline", 10, 1e-3), ("chebyshev", 8, 1e-3),
                                                ("fourier", 6, 1e-3), ("rbf", 10, 5e-3)])
def test_extend_grid_keeps_the_function(basis, new_size, tol):
    layer = KANLinear(3, 4, basis=basis, grid_size=5, rngs=nnx.Rngs(0))
    x = uniform_samples(2)
    before = layer(x)
    layer.extend_grid(new_size, x)
    assert layer.coef.shape == (4, 3, layer.num_bases(new_size)) and layer.grid_size == new_size
    assert relative_change(before, layer(x)) < tol


def test_extend_grid_without_samples_sweeps_the_grid_range():
    layer = KANLinear(2, 2, grid_size=4, rngs=nnx.Rngs(0))
    x = uniform_samples(3, dim=2)
    before = layer(x)
    layer.extend_grid(8)
    assert layer.grid.shape == (2, 8 + 7) and relative_change(before, layer(x)) < 1e-4


@pytest.mark.parametrize("basis", ["bspline", "rbf", "chebyshev", "fourier"])
def test_each_basis_can_represent_a_sine(basis):
    layer = KANLinear(1, 1, basis=basis, grid_size=10, base_activation=None,
                      standalone_spline_scaler=False, rngs=nnx.Rngs(0))
    x = jnp.linspace(-1, 1, 401)[:, None]
    target = jnp.sin(jnp.pi * x)
    layer.coef[...] = kan_ops.refit_coefficients(layer.bases(x), target[:, :, None])
    assert float(jnp.mean((layer(x) - target) ** 2)) < 1e-4


def test_regularization_and_unknown_basis():
    layer = KANLinear(3, 2, rngs=nnx.Rngs(0))
    x = uniform_samples(4, n=64)
    reg, grads = nnx.jit(nnx.value_and_grad(lambda m: m.regularization(x)))(layer)
    assert np.isfinite(float(reg)) and float(jnp.abs(grads["coef"][...]).sum()) > 0
    edges = layer.edge_values(x)
    np.testing.assert_allclose(edges.sum(-1), layer(x), atol=1e-5)
    with pytest.raises(ConfigError, match="basis 'spline'"):
        KANLinear(3, 2, basis="spline", rngs=nnx.Rngs(0))


def test_group_rational_parameters_and_init():
    act = GroupRational(32, groups=8, init="gelu", rngs=nnx.Rngs(0))
    assert count(act) == 6 + 4 * 8
    x = jnp.linspace(-3, 3, 64).reshape(2, 32)
    assert float(jnp.max(jnp.abs(act(x) - jax.nn.gelu(x)))) < 1e-2
    with pytest.raises(ConfigError, match="divide"):
        GroupRational(30, groups=8, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("init", ["gelu", "silu"])
def test_kat_ffn_preserves_variance_at_init(init):
    cfg = transformer(width=256, ffn_mult=4.0, grkan_init=init)
    ffn = GroupRationalFFN(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4096, 256))
    ratio = float(jnp.var(jax.jit(lambda x: ffn(x))(x)) / jnp.var(x))
    assert 0.9 < ratio < 1.1, ratio


@pytest.mark.parametrize("ffn", ["kan", "grkan", "polyrelu", "polynorm"])
def test_ffn_kinds_run_in_the_language_model(ffn):
    cfg = transformer(width=16, depth=1, num_heads=2, max_len=16, ffn=ffn, ffn_mult=2.0)
    model = build(cfg, nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, size=(2, 8)), jnp.int32)
    loss = lambda m: jnp.mean(m(tokens) ** 2)
    value, grads = nnx.jit(lambda m: nnx.value_and_grad(loss)(m))(model)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_prune_edges_switches_off_weak_edges_for_good():
    layer = KANLinear(3, 2, rngs=nnx.Rngs(0))
    layer.coef[...] = layer.coef[...].at[1, 2].set(0.0)
    layer.base_weight[...] = layer.base_weight[...].at[1, 2].set(1e-4)
    x = uniform_samples(5, n=256)
    edges = layer.edge_values(x)
    assert layer.prune_edges(x, threshold=1e-3) == 1
    np.testing.assert_array_equal(layer.edge_mask[...], [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_allclose(layer(x), edges.sum(-1) - edges[:, :, 2] * jnp.array([0.0, 1.0]),
                               atol=1e-5)
    params = nnx.state(layer, nnx.Param)
    assert "edge_mask" not in params  # state, not trained


def test_plot_edge_functions_draws_every_edge():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    from jaxlab.layers.kan import plot_edge_functions
    layer = KANLinear(3, 2, rngs=nnx.Rngs(0))
    fig, curves = plot_edge_functions(layer, num=11)
    assert len(fig.axes) == 6 and curves.shape == (11, 2, 3)
    line = fig.axes[4].lines[0]  # output 1, input 1
    np.testing.assert_allclose(line.get_ydata(), curves[:, 1, 1])
    x = jnp.broadcast_to(jnp.linspace(-1, 1, 11)[:, None], (11, 3))
    np.testing.assert_allclose(curves.sum(-1), layer(x), atol=1e-5)
    matplotlib.pyplot.close(fig)
