"""The jitted step on several meshes, against one device, and gradient accumulation."""
import jax
import numpy as np
import pytest

from jaxlab.train import mesh as mesh_lib
from tests.train.helpers import make_run, run_steps

MESHES = {
    "data8": [("data", 8)],
    "data4_fsdp2": [("data", 4), ("fsdp", 2)],
    "data2_fsdp2_tensor2": [("data", 2), ("fsdp", 2), ("tensor", 2)],
}


@pytest.fixture(scope="module")
def single_device_result():
    run = make_run([("data", 1)], devices=jax.devices()[:1])
    return run_steps(run, run.init(), 0, 3)


@pytest.mark.parametrize("name", sorted(MESHES))
def test_sharded_step_matches_one_device(name, single_device_result):
    run = make_run(MESHES[name])
    state, losses = run_steps(run, run.init(), 0, 3)
    ref_state, ref_losses = single_device_result
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=2e-4, atol=2e-6),
                 state["params"], ref_state["params"])


def test_three_steps_lower_the_loss(single_device_result):
    _, losses = single_device_result
    assert losses[2] < losses[0]


def test_grad_accumulation_matches_one_big_batch():
    plain = make_run([("data", 4)], devices=jax.devices()[:4])
    accum = make_run([("data", 4)], devices=jax.devices()[:4], **{"train.grad_accum": 2})
    state_plain, losses_plain = run_steps(plain, plain.init(), 0, 2)
    state_accum, losses_accum = run_steps(accum, accum.init(), 0, 2)
    np.testing.assert_allclose(losses_accum, losses_plain, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                         rtol=2e-4, atol=2e-6),
                 state_accum["params"], state_plain["params"])


@pytest.mark.parametrize("mesh,axis", [([("fsdp", 8)], "fsdp"), ([("tensor", 8)], "tensor")])
def test_parameters_are_really_sharded(mesh, axis):
    run = make_run(mesh, **{"model.width": 64, "model.num_heads": 8})
    state = run.init()
    total = sum(x.nbytes for x in jax.tree.leaves(state["params"]))
    per_device = mesh_lib.bytes_per_device(state["params"])
    assert len(per_device) == 8
    # Everything but a few small replicated vectors is split 8 ways.
    assert max(per_device.values()) < total / 4, (axis, per_device, total)
    kernel_specs = {str(s.spec) for s in jax.tree.leaves(run.shardings["params"])}
    assert any(axis in spec for spec in kernel_specs)
    state, losses = run_steps(run, state, 0, 1)
    assert np.isfinite(losses[0])


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32_loss(single_device_result):
    run = make_run([("data", 1)], devices=jax.devices()[:1], **{"model.dtype": "bfloat16"})
    state, losses = run_steps(run, run.init(), 0, 3)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state["params"]))
    np.testing.assert_allclose(losses, single_device_result[1], rtol=2e-2)


def test_z_loss_changes_the_update_not_the_reported_loss():
    plain = make_run([("data", 1)], devices=jax.devices()[:1])
    zloss = make_run([("data", 1)], devices=jax.devices()[:1], **{"train.z_loss": 1e-1})
    state_plain, losses_plain = run_steps(plain, plain.init(), 0, 2)
    state_z, losses_z = run_steps(zloss, zloss.init(), 0, 2)
    assert losses_z[0] == pytest.approx(losses_plain[0], rel=1e-6)
    kernel = lambda s: np.asarray(s["params"]["blocks"][0]["ffn"]["sublayer"]["up"]["kernel"])
    assert not np.allclose(kernel(state_z), kernel(state_plain))
