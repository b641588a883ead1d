"""A run killed at a random step (SIGKILL) or stopped (SIGTERM), then rerun with the same
command, ends bitwise identical to a run that was never interrupted. Real subprocesses;
marked slow, and `.ci/run` runs them."""
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxlab import config as config_lib
from jaxlab.train.checkpoint import Checkpointer
from jaxlab.train.loop import Run
from jaxlab.train.metrics import read_jsonl

pytestmark = pytest.mark.slow

STEPS, EVERY = 160, 20
OVERRIDES = {"train.steps": STEPS, "ckpt.every": EVERY, "log.every": 1, "train.eval_every": 40}
TIMING = ("step_time_s", "tokens_per_s")


def command(workdir):
    return ([sys.executable, "-m", "jaxlab", "train", "--config", "configs/synthetic/copy.py:runlocal",
             "--workdir", str(workdir), "--no-progress"]
            + [f"--config.{k}={v}" for k, v in OVERRIDES.items()])


def logged_step(workdir) -> int:
    try:
        rows = read_jsonl(workdir / "metrics.jsonl")
    except (OSError, ValueError):
        return 0
    return max((r["step"] for r in rows), default=0)


def start_and_interrupt(workdir, sig, at_step):
    process = subprocess.Popen(command(workdir), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 240
    while logged_step(workdir) < at_step and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def comparable_rows(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING}
            for r in read_jsonl(workdir / "metrics.jsonl")]


def final_state(workdir):
    run = Run(config_lib.load("configs/synthetic/copy.py:runlocal", OVERRIDES))
    state, _ = Checkpointer(workdir / "checkpoints").restore(run.restore_target())
    return jax.device_get(state)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    subprocess.run(command(workdir), check=True, capture_output=True, timeout=600)
    return comparable_rows(workdir), final_state(workdir)


def assert_same_as_reference(workdir, reference):
    rows, state = reference
    assert comparable_rows(workdir) == rows
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, STEPS + 1))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), final_state(workdir), state)


def test_sigkill_at_a_random_step_then_rerun(tmp_path, reference):
    at_step = random.Random(os.getpid()).randint(EVERY + 1, STEPS - 10)
    code, _, _ = start_and_interrupt(tmp_path, signal.SIGKILL, at_step)
    assert code == -signal.SIGKILL, f"the run ended before the kill at step {at_step}"
    assert logged_step(tmp_path) < STEPS
    subprocess.run(command(tmp_path), check=True, capture_output=True, timeout=600)
    assert_same_as_reference(tmp_path, reference)


def test_sigterm_saves_the_current_step_then_rerun_resumes_there(tmp_path, reference):
    code, _, err = start_and_interrupt(tmp_path, signal.SIGTERM, 30)
    assert code == 128 + signal.SIGTERM, err
    stopped_at = int(err.split("after step ")[1].split(";")[0])
    assert str(stopped_at) in os.listdir(tmp_path / "checkpoints")
    result = subprocess.run(command(tmp_path), check=True, capture_output=True, text=True,
                            timeout=600)
    assert f"from step {stopped_at}" in result.stdout
    assert_same_as_reference(tmp_path, reference)
