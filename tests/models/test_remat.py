"""Rematerialization policies change memory, not math."""
import jax
import numpy as np
import pytest

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.train.loop import Run
from tests.train.helpers import run_steps


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_the_same_steps(policy):
    devices = jax.devices()[:1]
    plain = Run(config_lib.load("configs/lm/gpt.py:runlocal", {"mesh": [("data", 1)]}), devices)
    remat = Run(config_lib.load("configs/lm/gpt.py:runlocal",
                                {"mesh": [("data", 1)], "model.remat": policy}), devices)
    state_a, losses_a = run_steps(plain, plain.init(), 0, 2)
    state_b, losses_b = run_steps(remat, remat.init(), 0, 2)
    np.testing.assert_allclose(losses_b, losses_a, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 state_b["params"], state_a["params"])


def test_full_remat_keeps_less_for_the_backward_pass():
    def temp_bytes(policy):
        config = config_lib.load("configs/lm/gpt.py:depth=4,width=64,seq_len=128,batch=8",
                                 {"mesh": [("data", 1)], "model.remat": policy})
        run = Run(config, jax.devices()[:1])
        compiled = run.train_step.lower(run.restore_target(), run.batch("train", 0)).compile()
        return compiled.memory_analysis().temp_size_in_bytes
    assert temp_bytes("full") < temp_bytes("none")


def test_unknown_policy():
    with pytest.raises(ConfigError, match="model.remat='some' is unknown; valid: none, full"):
        Run(config_lib.load("configs/lm/gpt.py:runlocal", {"model.remat": "some"}))
