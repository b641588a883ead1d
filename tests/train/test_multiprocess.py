"""Two processes × 4 CPU devices through jax.distributed on localhost train like one process ×
8 devices, and their checkpoint restores in one process. Marked slow; `.ci/run` runs it."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxlab import config as config_lib
from jaxlab.train.checkpoint import Checkpointer
from jaxlab.train.loop import Run, train
from jaxlab.train.metrics import read_jsonl

pytestmark = pytest.mark.slow
SPEC = "configs/synthetic/copy.py:runlocal"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_and_their_checkpoint_restores_in_one(tmp_path):
    workdir, port = tmp_path / "two", free_port()
    processes = []
    for rank in range(2):
        env = dict(os.environ, JAXLAB_DISTRIBUTED="1", JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(rank),
                   XLA_FLAGS="--xla_force_host_platform_device_count=4")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "jaxlab", "train", "--config", SPEC, "--workdir", str(workdir),
             "--no-progress", "--config.log.every=1"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]

    config = config_lib.load(SPEC, {"log.every": 1})
    one = train(config, tmp_path / "one", progress=False, emit=lambda _: None)
    two_rows = read_jsonl(workdir / "metrics.jsonl")
    one_rows = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    losses = lambda rows: [r["loss"] for r in rows if "loss" in r]
    assert len(losses(two_rows)) == config.train.steps
    np.testing.assert_allclose(losses(two_rows), losses(one_rows), rtol=1e-6)
    assert one["valid_loss"] == pytest.approx(
        [r for r in two_rows if "valid_loss" in r][-1]["valid_loss"], rel=1e-6)

    run = Run(config)
    from_two, _ = Checkpointer(workdir / "checkpoints").restore(run.restore_target())
    from_one, _ = Checkpointer(tmp_path / "one" / "checkpoints").restore(run.restore_target())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                                                         atol=1e-7),
                 jax.device_get(from_two), jax.device_get(from_one))
