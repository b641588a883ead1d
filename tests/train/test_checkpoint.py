"""Save then resume bit-identically, and restore onto other meshes."""
import jax
import numpy as np

from jaxlab.train.checkpoint import Checkpointer
from tests.train.helpers import make_run, run_steps


def assert_trees_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_resume_continues_bit_identically(tmp_path):
    run = make_run([("data", 4), ("fsdp", 2)])
    state, _ = run_steps(run, run.init(), 0, 2)
    ckpt = Checkpointer(tmp_path / "ckpt", keep=2)
    ckpt.save(2, state)
    ckpt.wait()
    straight, straight_losses = run_steps(run, state, 2, 4)

    restored, _ = Checkpointer(tmp_path / "ckpt").restore(run.restore_target())
    assert int(restored["step"]) == 2
    resumed, resumed_losses = run_steps(run, restored, 2, 4)
    assert resumed_losses == straight_losses
    assert_trees_equal(resumed, straight)


def test_restore_onto_a_different_mesh(tmp_path):
    source = make_run([("data", 4), ("fsdp", 2)], **{"model.width": 64})
    state, _ = run_steps(source, source.init(), 0, 1)
    saved = jax.device_get(state)
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(1, state)
    ckpt.close()

    for mesh, devices in (([("data", 8)], jax.devices()), ([("data", 1)], jax.devices()[:1])):
        target = make_run(mesh, devices=devices, **{"model.width": 64})
        restored, _ = Checkpointer(tmp_path / "ckpt").restore(target.restore_target())
        assert_trees_equal(jax.device_get(restored), saved)
        kernel = restored["params"]["blocks"][0]["ffn"]["sublayer"]["up"]["kernel"]
        assert kernel.sharding.mesh.shape == target.mesh.shape
        _, losses = run_steps(target, restored, 1, 2)
        assert np.isfinite(losses[0])
