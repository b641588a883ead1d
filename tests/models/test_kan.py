"""The KAN regressor: a [2, 5, 1] KAN fits exp(sin(πx) + y²); the mse loss; function_fit data."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from jaxlab.data import build_dataset
from jaxlab.data.function_fit import function_pool
from jaxlab.errors import ConfigError
from jaxlab.models import build
from jaxlab.registry import LOSSES


def fit(model, x, y, steps, lr=1e-2):
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x)[:, 0] - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(steps):
        step(model, optimizer)


def refit_grids(model, x, new_grid_size=None):
    """Grid update (or extension) layer by layer, each on its own inputs."""
    for layer in model.layers:
        if new_grid_size is None:
            layer.update_grid(x)
        else:
            layer.extend_grid(new_grid_size, x)
        x = layer(x)


@pytest.mark.slow
def test_a_2_5_1_kan_fits_exp_sin_plus_square():
    pool = function_pool("exp_sin_sq", 1000, 1000, 0)
    (x, y), (x_valid, y_valid) = pool["train"], pool["valid"]
    model = build(ConfigDict(dict(name="kan", widths=[2, 5, 1], grid_size=5, grid_bound=1.0)),
                  nnx.Rngs(0))
    refit_grids(model, x)
    fit(model, x, y, 400)
    refit_grids(model, x, new_grid_size=10)  # grid extension, as in the KAN paper
    fit(model, x, y, 400)
    mse = float(jnp.mean((model(x_valid)[:, 0] - y_valid) ** 2))
    assert mse < 1e-3, mse


def test_mse_loss_and_the_dataset():
    mse = LOSSES.get("mse")
    np.testing.assert_allclose(mse(jnp.array([[1.0], [3.0]]), jnp.array([0.0, 1.0])), [1.0, 4.0])
    ds = build_dataset(ConfigDict({"name": "function_fit", "function": "product"}))
    batch = ds.batch("valid", 0, 8, seed=0)
    np.testing.assert_allclose(batch["targets"], batch["inputs"][:, 0] * batch["inputs"][:, 1], rtol=1e-6)
    bessel = build_dataset(ConfigDict({"name": "function_fit", "function": "bessel"})).batch("train", 0, 4, seed=0)
    assert bessel["inputs"].shape == (4, 1)
    with pytest.raises(ConfigError, match="function"):
        build_dataset(ConfigDict({"name": "function_fit", "function": "sinc"}))
    with pytest.raises(ConfigError, match="widths"):
        build(ConfigDict(dict(name="kan", widths=[3])), nnx.Rngs(0))


def test_prune_nodes_removes_a_dead_hidden_node_and_keeps_the_function():
    model = build(ConfigDict(dict(name="kan", widths=[2, 4, 1], grid_size=5)), nnx.Rngs(0))
    dead = 2  # no edge leaves hidden node 2
    out_layer = model.layers[1]
    out_layer.coef[...] = out_layer.coef[...].at[:, dead].set(0.0)
    out_layer.base_weight[...] = out_layer.base_weight[...].at[:, dead].set(0.0)
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(256, 2)), jnp.float32)
    before = model(x)
    assert model.prune_nodes(x, threshold=1e-6) == [2, 3, 1]
    assert model.layers[0].coef.shape == (3, 2, 8) and model.layers[1].coef.shape == (1, 3, 8)
    np.testing.assert_allclose(model(x), before, atol=1e-5)


def test_mlp_baseline_regressor_has_the_widths_it_is_given():
    """model.name=mlp (the KAN papers' baseline): dense layers with biases, activation between."""
    from jaxlab import config as config_lib
    from jaxlab.models import build
    cfg = config_lib.load("configs/kan/fit.py", {"model.name": "mlp",
                                                 "model.widths": [2, 13, 13, 1]}).model
    model = build(cfg, nnx.Rngs(0))
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert params == (2 * 13 + 13) + (13 * 13 + 13) + (13 + 1)
    assert model(jnp.ones((5, 2))).shape == (5, 1)
