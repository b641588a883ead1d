"""Optimizer and schedule factory over optax."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxlab.errors import ConfigError
from jaxlab.registry import OPTIMIZERS, SCHEDULES
from jaxlab.train.optim import build_optimizer, decay_mask


def optim_cfg(**overrides):
    cfg = ml_collections.ConfigDict(dict(
        name="adamw", lr=0.1, schedule="constant", warmup_steps=0, final_lr_fraction=0.1,
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0, clip_norm=0.0, momentum=0.9))
    cfg.update(overrides)
    return cfg


def test_registries_list_the_issue_names():
    assert set(OPTIMIZERS.names()) >= {"adamw", "lamb", "adafactor", "sgd"}
    assert set(SCHEDULES.names()) >= {"warmup_cosine", "linear", "constant"}


@pytest.mark.parametrize("name", ["adamw", "lamb", "adafactor", "sgd"])
def test_every_optimizer_descends_a_quadratic(name):
    tx, _ = build_optimizer(optim_cfg(name=name, lr=0.05), total_steps=50)
    params = {"w": jnp.full((4, 3), 2.0), "b": jnp.full((3,), -1.0)}
    loss = lambda p: sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(p))
    state = tx.init(params)
    start = loss(params)
    for _ in range(30):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    assert loss(params) < 0.5 * start


def test_schedules_warm_up_and_decay():
    total = 100
    cosine = SCHEDULES.get("warmup_cosine")(optim_cfg(lr=1.0, warmup_steps=10), total)
    assert float(cosine(0)) == 0.0 and abs(float(cosine(10)) - 1.0) < 1e-6
    assert abs(float(cosine(total)) - 0.1) < 1e-6
    linear = SCHEDULES.get("linear")(optim_cfg(lr=1.0, warmup_steps=10, final_lr_fraction=0.0), total)
    np.testing.assert_allclose([float(linear(s)) for s in (5, 10, 55, 100)], [0.5, 1.0, 0.5, 0.0],
                               atol=1e-6)
    constant = SCHEDULES.get("constant")(optim_cfg(lr=0.3, warmup_steps=0), total)
    assert float(constant(0)) == float(constant(99)) == pytest.approx(0.3)


def test_weight_decay_skips_vectors():
    params = {"kernel": jnp.ones((2, 2)), "scale": jnp.ones((2,))}
    assert decay_mask(params) == {"kernel": True, "scale": False}
    tx, _ = build_optimizer(optim_cfg(name="adamw", lr=0.1, weight_decay=0.5), total_steps=10)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    assert float(jnp.abs(updates["kernel"]).max()) > 0
    assert float(jnp.abs(updates["scale"]).max()) == 0


def test_clipping_bounds_the_update_of_sgd():
    tx, _ = build_optimizer(optim_cfg(name="sgd", lr=1.0, momentum=0.0, clip_norm=1.0), 10)
    params = {"w": jnp.zeros((3,))}
    updates, _ = tx.update({"w": jnp.array([30.0, 40.0, 0.0])}, tx.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.6, -0.8, 0.0], rtol=1e-6)


def test_bad_learning_rate_and_unknown_names():
    with pytest.raises(ConfigError, match="optim.lr=-1.0 must be positive"):
        build_optimizer(optim_cfg(lr=-1.0), 10)
    with pytest.raises(ConfigError, match="unknown schedule 'cos'; known: constant, linear"):
        build_optimizer(optim_cfg(schedule="cos"), 10)
