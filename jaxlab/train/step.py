"""Pure train and eval steps over the plain-pytree train state (see state.py).

Losses are weighted sums divided once by the total weight of the global batch, so gradient
accumulation over microbatches (a lax.scan inside the step) gives the same update as one big batch.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxlab.errors import ConfigError
from jaxlab.layers.common import training_mode
from jaxlab.ops import losses as loss_ops
from jaxlab.registry import LOSSES
from jaxlab.train.state import ModelDef, split_model

Batch = dict[str, jax.Array]


def weighted_sums(model_def: ModelDef, loss_fn: Callable, z_loss: float, params: Any, extra: Any,
                  batch: Batch) -> tuple[jax.Array, dict]:
    """(objective sum, aux) over one microbatch; aux holds the sums the metrics are made of."""
    model = model_def.merge(params, extra)
    logits = model(batch["inputs"])
    weights = batch["weights"].astype(jnp.float32)
    loss_sum = jnp.sum(loss_fn(logits, batch["targets"]) * weights)
    objective = loss_sum
    if z_loss:
        objective = objective + z_loss * jnp.sum(loss_ops.z_loss(logits) * weights)
    aux = {"loss_sum": loss_sum, "weight_sum": jnp.sum(weights),
           "correct_sum": jnp.sum(loss_ops.accuracy(logits, batch["targets"]) * weights),
           "extra": split_model(model)[1]}
    return objective, aux


def global_norm(tree: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


NONFINITE_POLICIES = ("halt", "skip")


def nonfinite_policy(train_cfg) -> str:
    policy = train_cfg.get("nonfinite", "halt")
    if policy not in NONFINITE_POLICIES:
        raise ConfigError(f"train.nonfinite={policy!r} is not a policy; valid: "
                          f"{', '.join(NONFINITE_POLICIES)}")
    return policy


def keep_old_if_nonfinite(old: dict, new: dict, metrics: dict) -> tuple[dict, jax.Array]:
    """The `skip` policy: a step with a non-finite loss or gradient changes nothing but the
    step counter (so the data still moves on); returns the state and 1.0 if it skipped."""
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    kept["step"] = new["step"]
    return kept, 1.0 - finite.astype(jnp.float32)


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, train_cfg) -> Callable:
    loss_fn = LOSSES.get(train_cfg.loss)
    grad_accum = int(train_cfg.grad_accum)
    skip_nonfinite = nonfinite_policy(train_cfg) == "skip"
    sums = jax.value_and_grad(
        lambda p, e, b: weighted_sums(model_def, loss_fn, train_cfg.z_loss, p, e, b), has_aux=True)

    def train_step(state: dict, batch: Batch) -> tuple[dict, dict]:
        params, extra = state["params"], state["extra"]
        micro = jax.tree.map(lambda x: x.reshape((grad_accum, -1) + x.shape[1:]), batch)

        def accumulate(carry, microbatch):
            grads_acc, totals, extra = carry
            (_, aux), grads = sums(params, extra, microbatch)
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            totals = {k: totals[k] + aux[k] for k in totals}
            return (grads_acc, totals, aux["extra"]), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        totals = {k: jnp.zeros((), jnp.float32) for k in ("loss_sum", "weight_sum", "correct_sum")}
        # Training mode lets layers update running state (norm statistics, σReparam vectors)
        # and read the global step (PRepBN); eval_step runs in the default eval mode.
        with training_mode(state["step"]):
            (grads, totals, extra), _ = jax.lax.scan(accumulate, (zeros, totals, extra), micro)
        denominator = jnp.maximum(totals["weight_sum"], 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
                     "extra": extra, "opt_state": opt_state}
        metrics = {"loss": totals["loss_sum"] / denominator,
                   "accuracy": totals["correct_sum"] / denominator,
                   "grad_norm": global_norm(grads),
                   "lr": schedule(state["step"])}
        if skip_nonfinite:
            new_state, metrics["skipped"] = keep_old_if_nonfinite(state, new_state, metrics)
        return new_state, metrics

    return train_step


def make_eval_step(model_def: ModelDef, train_cfg) -> Callable:
    loss_fn = LOSSES.get(train_cfg.loss)

    def eval_step(state: dict, batch: Batch) -> dict:
        _, aux = weighted_sums(model_def, loss_fn, 0.0, state["params"], state["extra"], batch)
        return {k: aux[k] for k in ("loss_sum", "weight_sum", "correct_sum")}

    return eval_step
