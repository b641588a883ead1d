"""Norm kinds and placements inside the real jitted train step, on the 8-device mesh."""
import itertools

import jax
import numpy as np
import pytest

from tests.train.helpers import make_run, run_steps

KINDS = ["layernorm", "rmsnorm", "crmsnorm", "dyt", "powernorm", "repbn", "prepbn"]
POSITIONS = ["pre", "post", "peri", "mix"]
MESH = [("data", 4), ("fsdp", 2)]
# One run per kind covers every placement and the stability options; the full product is slow.
# rmsnorm-pre is the default config, trained on these meshes by tests/train/test_step.py.
FAST = [("layernorm", "peri", {"model.qk_norm": "rms"}),
        ("crmsnorm", "mix", {"model.layernorm_scaling": True}),
        ("dyt", "post", {}), ("powernorm", "pre", {"model.sigma_reparam": True}),
        ("repbn", "peri", {"model.qk_norm": "layer", "model.qk_norm_affine": False})]
# prepbn (with mix) trains on the mesh in test_prepbn_schedule_is_unchanged_by_gradient_accumulation.


def losses_fall(norm, position, extra, steps=4):
    run = make_run(MESH, **{"model.norm": norm, "model.norm_position": position, **extra})
    state, losses = run_steps(run, run.init(), 0, steps)
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], (norm, position, losses)
    return run, state


@pytest.mark.parametrize("norm,position,extra", FAST, ids=[f"{n}-{p}" for n, p, _ in FAST])
def test_kind_and_placement_train_on_the_mesh(norm, position, extra):
    run, state = losses_fall(norm, position, extra)
    if norm == "powernorm":  # with σReparam: the running state is carried by the step
        check_running_state_moves_only_in_training(run, state)


@pytest.mark.slow
@pytest.mark.parametrize("norm,position", list(itertools.product(KINDS, POSITIONS)))
def test_every_kind_times_placement_trains(norm, position):
    losses_fall(norm, position, {})


def extra_leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(state["extra"])]


def check_running_state_moves_only_in_training(run, state):
    before = extra_leaves(state)
    assert len(before) > 4  # σReparam vectors and PowerNorm statistics live in "extra"
    with jax.set_mesh(run.mesh):
        run.eval_step(state, run.batch("valid", 0))  # eval returns sums only: nothing to update
    state, _ = run_steps(run, state, 4, 5)
    after = extra_leaves(state)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


def test_prepbn_schedule_is_unchanged_by_gradient_accumulation():
    # With two identical halves, each microbatch has the full batch's BN statistics, so the
    # only way accumulation could differ is a schedule that counts forward passes.
    extra = {"model.norm": "prepbn", "model.norm_position": "mix", "model.mix_alpha": 0.5,
             "model.prepbn_decay_steps": 8}
    plain = make_run(MESH, **extra)
    accum = make_run(MESH, **extra, **{"train.grad_accum": 2})
    states, plain_losses = [plain.init(), accum.init()], []
    for step in range(4):
        batch = jax.tree.map(np.asarray, plain.batch("train", step))
        half = {k: v[: len(v) // 2] for k, v in batch.items()}
        doubled = {k: np.concatenate([v, v]) for k, v in half.items()}
        losses = []
        for i, run in enumerate((plain, accum)):
            with jax.set_mesh(run.mesh):
                states[i], metrics = run.train_step(states[i], doubled)
            losses.append(float(metrics["loss"]))
        np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
        plain_losses.append(losses[0])
    assert plain_losses[-1] < plain_losses[0], plain_losses
