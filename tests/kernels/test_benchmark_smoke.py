"""benchmarks/kernels.py runs end to end at smoke size (tiny shapes, interpreted kernels), so a
GPU session does not find it broken: every part prints its rows, and the sweep checks each
launch setting's values and gradients against the XLA path."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 12 s; the slow pass of .ci/run keeps it checked
def test_every_part_runs_at_smoke_size():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke",
         "--parts", "blocks,attention,norm,normsweep,linear"],
        capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "best forward (16, 16, 4, 2)" in out  # the sweep's one setting passed its check
    assert "triton vs xla   relative error" in out
    assert "fwd+bwd  pallas rows=" in out and "of copy" in out
    assert "T=    64:" in out
