"""A tiny LM config and Run factory shared by the training tests."""
import jax

from jaxlab import config as config_lib
from jaxlab.train.loop import Run

TINY = "configs/lm/gpt.py:runlocal"


def tiny_config(**overrides):
    return config_lib.load(TINY, overrides)


def make_run(mesh, devices=None, **overrides):
    overrides = {"mesh": mesh, **overrides}
    devices = jax.devices() if devices is None else devices
    return Run(tiny_config(**overrides), devices=devices)


def run_steps(run, state, start, stop):
    """Applies steps [start, stop) and returns (state, [loss per step])."""
    losses = []
    for step in range(start, stop):
        state, metrics = run.train_step(state, run.batch("train", step))
        losses.append(float(metrics["loss"]))
    return state, losses
