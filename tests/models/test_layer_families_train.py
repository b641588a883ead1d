"""Each layer family of issue 5 trains a few runlocal steps on the 8-device mesh with falling
loss: the KAN-family FFN kinds inside the LM, the KAN regressor and the Hopfield lookup model."""
import pytest

from jaxlab import config as config_lib
from jaxlab.train.loop import Run
from tests.train.helpers import run_steps

MESH = [("data", 4), ("fsdp", 2)]


@pytest.mark.parametrize("ffn", ["kan", "grkan", "polyrelu", "polynorm"])
def test_ffn_kind_trains_in_the_lm(ffn):
    run = Run(config_lib.load("configs/lm/gpt.py:runlocal", {"mesh": MESH, "model.ffn": ffn}))
    _, losses = run_steps(run, run.init(), 0, 4)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("spec", ["configs/kan/fit.py:runlocal", "configs/hopfield/tabular.py:runlocal"])
def test_model_trains(spec):
    run = Run(config_lib.load(spec, {"mesh": MESH, "train.batch_size": 64, "train.steps": 12}))
    _, losses = run_steps(run, run.init(), 0, 12)
    assert sum(losses[-3:]) / 3 < losses[0], losses  # batches differ: compare a short average
