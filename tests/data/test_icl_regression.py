"""icl_regression data, and the LSA claim: a trained one-layer linear self-attention matches the
best single gradient-descent step on in-context linear regression (von Oswald et al. 2023)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxlab.data import build_dataset
from jaxlab.errors import ConfigError
from jaxlab.ops import attention_variants as av

X_DIM, N = 4, 10


def dataset(**fields):
    return build_dataset(ml_collections.ConfigDict(dict(name="icl_regression", **fields)))


def test_examples_are_linear_tasks_with_a_hidden_query_answer():
    batch = dataset(x_dim=3, num_examples=5).batch("train", 0, 6, seed=0)
    tokens, target = batch["inputs"], batch["targets"]
    assert tokens.shape == (6, 6, 4) and target.shape == (6, 1)
    assert np.all(tokens[:, -1, -1] == 0.0) and np.all(np.abs(tokens[..., :3]) <= 1.0)
    for x, y, xq, yq in zip(tokens[:, :-1, :3], tokens[:, :-1, 3], tokens[:, -1, :3], target[:, 0]):
        w, *_ = np.linalg.lstsq(x, y, rcond=None)  # 5 points determine w in R^3 exactly
        np.testing.assert_allclose(xq @ w, yq, rtol=1e-4, atol=1e-4)
    noisy = dataset(x_dim=3, num_examples=5, noise=0.5).batch("train", 0, 6, seed=0)
    assert not np.allclose(noisy["targets"], target)
    with pytest.raises(ConfigError, match="data.noise"):
        dataset(noise=-1.0)


def test_the_token_trainer_refuses_it_in_one_sentence():
    from jaxlab import config as config_lib
    from jaxlab.train.loop import Run

    config = config_lib.load("configs/lm/gpt.py:runlocal", {"data.name": "icl_regression"})
    with pytest.raises(ConfigError, match="'icl_regression' is a regression task"):
        Run(config)


def mse(params, tokens, target):
    prediction = -av.lsa_update(tokens, *params, normalizer=N)[:, -1, X_DIM:]
    return jnp.mean((prediction - target) ** 2)


def test_trained_lsa_is_within_5_percent_of_the_best_gd_step():
    data = dataset(x_dim=X_DIM, num_examples=N)
    d = X_DIM + 1
    # Small init: from large random weights training can settle in a rank-deficient solution.
    params = [0.01 * jax.random.normal(k, (d, d)) for k in jax.random.split(jax.random.key(0), 4)]
    optimizer = optax.adam(5e-3)

    @jax.jit
    def step(params, opt_state, tokens, target):
        loss, grads = jax.value_and_grad(mse)(params, tokens, target)
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    for i in range(600):
        batch = data.batch("train", i, 256, seed=0)
        params, opt_state, _ = step(params, opt_state, jnp.asarray(batch["inputs"]),
                                    jnp.asarray(batch["targets"]))
    test = data.batch("valid", 0, 8192, seed=0)
    tokens, target = jnp.asarray(test["inputs"]), jnp.asarray(test["targets"])
    # The best single GD step: ŷ = η·g is linear in η, so the optimal η is a least-squares fit.
    g = av.gd_step_prediction(tokens[:, :N, :X_DIM], tokens[:, :N, X_DIM:], tokens[:, -1, :X_DIM], 1.0)
    eta = jnp.sum(g * target) / jnp.sum(g * g)
    gd_loss = float(jnp.mean((eta * g - target) ** 2))
    construction_loss = float(mse(av.gd_construction(X_DIM, 1, float(eta)), tokens, target))
    np.testing.assert_allclose(construction_loss, gd_loss, rtol=1e-4)
    lsa_loss = float(mse(params, tokens, target))
    assert abs(lsa_loss - gd_loss) <= 0.05 * gd_loss, (lsa_loss, gd_loss)
    assert gd_loss < 0.6 * float(jnp.mean(target ** 2))  # the GD step itself is informative
