"""Transformers learn in-context by gradient descent (von Oswald et al., 2023).

One linear self-attention layer (LSA: no softmax, no normalisation) on tokens e_j = (x_j, y_j)
can implement one gradient-descent step on the in-context regression loss from W = 0
(jaxlab.ops.attention_variants.gd_construction). The paper trains a single LSA layer on
in-context linear regression and finds it matches that construction: the same loss as one GD
step with the best learning rate, aligned predictions, aligned sensitivities ∂ŷ/∂x_q, and
weights equal to the construction up to scale.

Rows (trained and measured here, not by the token trainer, which does not take icl_regression):
  gd-1step    one GD step from W = 0 with the learning rate η fitted by least squares on a
              training batch, evaluated on fresh test tasks;
  lsa-1layer  one LSA layer trained with Adam on the regression loss, evaluated on the same
              test tasks and compared with the GD step.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlab.data import build_dataset
from jaxlab.experiments.spec import (HOLDS, FAILS, Claim, Experiment, Scale, Verdict, at_least,
                                     at_most, computed, describe)
from jaxlab.ops import attention_variants as av


def _dataset(p):
    return build_dataset(ml_collections.ConfigDict(dict(
        name="icl_regression", x_dim=p.x_dim, num_examples=p.num_examples, noise=0.0)))


def _batch(p, split, index, size):
    batch = _dataset(p).batch(split, index, size, seed=p.seed)
    return jnp.asarray(batch["inputs"]), jnp.asarray(batch["targets"])


def _gd_prediction(p, tokens, eta):
    n, dx = p.num_examples, p.x_dim
    return eta * av.gd_step_prediction(tokens[:, :n, :dx], tokens[:, :n, dx:], tokens[:, -1, :dx], 1.0)


def _best_eta(p):
    """ŷ_GD = η·g is linear in η, so the best η on a training batch is a least-squares fit."""
    tokens, target = _batch(p, "train", 10**6, p.eval_batch)  # an index training never reaches
    g = _gd_prediction(p, tokens, 1.0)
    return float(jnp.sum(g * target) / jnp.sum(g * g))


def _lsa_prediction(params, tokens, p):
    # The query's y slot starts at 0 and the layer writes −ŷ there (the construction's sign).
    return -av.lsa_update(tokens, *params, normalizer=p.num_examples)[:, -1, p.x_dim:]


def _mse(prediction, target):
    return jnp.mean((prediction - target) ** 2)


def gd_step(p):
    tokens, target = _batch(p, "valid", 0, p.eval_batch)
    eta = _best_eta(p)
    return {"test_loss": float(_mse(_gd_prediction(p, tokens, eta), target)), "gd_eta": eta,
            "zero_loss": float(jnp.mean(target ** 2))}


def _train_lsa(p):
    d = p.x_dim + 1
    keys = jax.random.split(jax.random.key(p.seed), 4)
    # Each weight starts at init_scale·N(0, 1): from 0.01 the degree-4 product sits so near the
    # saddle at zero that some seeds never leave it in a CPU budget (see the notes).
    params = [p.init_scale * jax.random.normal(k, (d, d)) for k in keys]
    tx = optax.adam(optax.cosine_decay_schedule(p.lr, p.steps, alpha=0.01))

    @jax.jit
    def step(params, opt_state, tokens, target):
        loss, grads = jax.value_and_grad(
            lambda w: _mse(_lsa_prediction(w, tokens, p), target))(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    for i in range(p.steps):
        params, opt_state, _ = step(params, opt_state, *_batch(p, "train", i, p.batch))
    return params


def _effective_tensor(params, x_dim):
    """What one LSA layer computes in the query's y slot: ŷ = −(1/N) Σ_i (p·e_i)(e_iᵀ M e_q)
    with p the y row of P V and M = Kᵀ Q read at the query's x coordinates; p ⊗ M[:, :x_dim]
    is the whole function (individual matrices are only defined up to rescalings)."""
    wq, wk, wv, wp = params
    p_row = (wp @ wv)[x_dim:].reshape(-1)
    m = (wk.T @ wq)[:, :x_dim]
    return jnp.einsum("a,bc->abc", p_row, m).reshape(-1)


def _cos(a, b):
    return float(jnp.sum(a * b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))


def lsa_layer(p):
    params = _train_lsa(p)
    tokens, target = _batch(p, "valid", 0, p.eval_batch)
    eta = _best_eta(p)
    lsa, gd = _lsa_prediction(params, tokens, p), _gd_prediction(p, tokens, eta)

    def query_sensitivity(predict, tokens_nd):
        """∂ŷ/∂x_q of one task (the paper's model alignment)."""
        def of_query(xq):
            return predict(tokens_nd.at[-1, :p.x_dim].set(xq)[None])[0, 0]
        return jax.grad(of_query)(tokens_nd[-1, :p.x_dim])

    sens = jax.vmap(lambda t: query_sensitivity(lambda e: _lsa_prediction(params, e, p), t))(tokens)
    sens_gd = jax.vmap(lambda t: query_sensitivity(lambda e: _gd_prediction(p, e, eta), t))(tokens)
    cos_per_task = jnp.sum(sens * sens_gd, -1) / (
        jnp.linalg.norm(sens, axis=-1) * jnp.linalg.norm(sens_gd, axis=-1))
    construction = av.gd_construction(p.x_dim, 1, eta)
    return {"test_loss": float(_mse(lsa, target)),
            "prediction_cos": _cos(lsa.ravel(), gd.ravel()),
            "prediction_diff": float(jnp.linalg.norm(lsa - gd) / jnp.linalg.norm(gd)),
            "sensitivity_cos": float(jnp.mean(cos_per_task)),
            "construction_cos": _cos(_effective_tensor(params, p.x_dim),
                                     _effective_tensor(construction, p.x_dim)),
            "zero_loss": float(jnp.mean(target ** 2))}


def within_5_percent(results) -> Verdict:
    lsa, gd = results["lsa-1layer"]["test_loss"], results["gd-1step"]["test_loss"]
    gaps = [(a - b) / b for a, b in zip(lsa, gd)]
    ours = (f"test loss: LSA {describe(lsa)} vs best GD step {describe(gd)}; relative gap per "
            f"seed {', '.join(f'{g:+.2%}' for g in gaps)}")
    return Verdict(HOLDS if max(abs(g) for g in gaps) <= 0.05 else FAILS, ours)


def _scale(budget, **params):
    return Scale("", budget_minutes=budget, params=params)


EXPERIMENT = Experiment(
    name="lsa_in_context_gd",
    title="One trained linear self-attention layer ≈ one step of gradient descent",
    paper="von Oswald et al., Transformers learn in-context by gradient descent, ICML 2023 "
          "(arXiv:2212.07677)",
    scales={
        "smoke": _scale(1, x_dim=3, num_examples=6, steps=30, batch=64, lr=5e-3, init_scale=0.01,
                        eval_batch=256),
        "cpu": _scale(5, x_dim=10, num_examples=10, steps=4000, batch=1024, lr=2e-3,
                      init_scale=0.1, eval_batch=8192),
        "full": _scale(30, x_dim=10, num_examples=10, steps=50000, batch=2048, lr=1e-3,
                       init_scale=0.1, eval_batch=32768),
    },
    rows={"gd-1step": computed(gd_step), "lsa-1layer": computed(lsa_layer)},
    metrics=("test_loss", "zero_loss", "prediction_cos", "prediction_diff", "sensitivity_cos",
             "construction_cos", "gd_eta"),
    claims=(
        Claim("a trained single LSA layer reaches the loss of one gradient-descent step with the "
              "best learning rate (within 5%)", within_5_percent),
        Claim("the trained LSA's predictions match the GD step's (cosine > 0.99)",
              at_least("prediction_cos", "lsa-1layer", 0.99)),
        Claim("model alignment: the sensitivities ∂ŷ/∂x_q of LSA and of the GD step point the "
              "same way (mean cosine > 0.99)", at_least("sensitivity_cos", "lsa-1layer", 0.99)),
        Claim("“the weights found by optimization match the construction” (cosine of the "
              "layer's effective weight tensor with the construction's > 0.99)",
              at_least("construction_cos", "lsa-1layer", 0.99)),
        Claim("relative L2 difference of the predictions is small (≤ 0.1)",
              at_most("prediction_diff", "lsa-1layer", 0.1)),
    ),
    seeds=3,
    notes="Setup (the paper catalog's CPU protocol, after the paper's single-layer "
          "experiment): x ∈ U(−1,1)^10, w ~ N(0, I), 10 context pairs and one query, no noise, "
          "a single-head LSA layer with full d×d K, Q, V, P (normaliser 1/N), Adam with a "
          "cosine decay for 4000 steps of 1024 tasks; the paper reports these metrics as curves "
          "over training, we report the end point. η of the GD step is fitted on a training "
          "batch; every metric is on 8192 fresh test tasks. prediction_cos is the cosine of "
          "all test predictions as one vector; sensitivity_cos the mean over tasks of the "
          "cosine of ∂ŷ/∂x_q. GD++ and deeper stacks are not run. Initialisation: a first run "
          "with weights from 0.01·N(0, 1) left seed 1 of 3 at the zero predictor after 4000 "
          "steps (test loss +89% over GD; the other two seeds matched GD within 0.05%), so the "
          "init scale was raised to 0.1, chosen on seeds 100–102 (all three trained), not on "
          "the seeds reported here.",
)
