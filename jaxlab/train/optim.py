"""Optimizer factory over optax: `build_optimizer(config.optim, total_steps)`.

Optimizers and schedules are registries, so a new one is a registered function. Gradients are
clipped by global norm first; weight decay skips parameters with fewer than two dimensions
(norm scales, biases), the usual mask.
"""
from __future__ import annotations

import jax
import optax

from jaxlab.errors import ConfigError
from jaxlab.registry import OPTIMIZERS, SCHEDULES


def decay_mask(params):
    """Weight decay for matrices, not for vectors (norm scales, biases, gains). Parameters of
    scanned blocks (model.scan_layers: under blocks/layers) carry a leading layer axis that
    does not count, so both layouts decay the same parameters."""
    def is_matrix(path, p) -> bool:
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        stacked = any(a == "blocks" and b == "layers" for a, b in zip(keys, keys[1:]))
        return p.ndim - int(stacked) >= 2
    return jax.tree_util.tree_map_with_path(is_matrix, params)


@SCHEDULES.register("constant")
def constant(cfg, total_steps: int) -> optax.Schedule:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1)), optax.constant_schedule(cfg.lr)],
        [cfg.warmup_steps]) if cfg.warmup_steps else optax.constant_schedule(cfg.lr)


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(cfg, total_steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, max(cfg.warmup_steps, 1), max(total_steps, cfg.warmup_steps + 1),
        end_value=cfg.lr * cfg.get("final_lr_fraction", 0.1))


@SCHEDULES.register("linear")
def linear(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup to lr, then linear decay to lr · final_lr_fraction at the last step."""
    decay_steps = max(total_steps - cfg.warmup_steps, 1)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.lr, max(cfg.warmup_steps, 1)),
         optax.linear_schedule(cfg.lr, cfg.lr * cfg.get("final_lr_fraction", 0.0), decay_steps)],
        [cfg.warmup_steps])


@OPTIMIZERS.register("adamw")
def adamw(cfg, lr: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                       mask=decay_mask)


@OPTIMIZERS.register("lamb")
def lamb(cfg, lr: optax.Schedule) -> optax.GradientTransformation:
    return optax.lamb(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      mask=decay_mask)


@OPTIMIZERS.register("adafactor")
def adafactor(cfg, lr: optax.Schedule) -> optax.GradientTransformation:
    return optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None,
                           weight_decay_mask=decay_mask)


@OPTIMIZERS.register("sgd")
def sgd(cfg, lr: optax.Schedule) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
                       optax.sgd(lr, momentum=cfg.get("momentum", 0.9) or None))


def build_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, learning-rate schedule) for `config.optim`."""
    if cfg.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.lr} must be positive")
    schedule = SCHEDULES.get(cfg.schedule)(cfg, total_steps)
    tx = OPTIMIZERS.get(cfg.name)(cfg, schedule)
    if cfg.get("clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx, schedule
