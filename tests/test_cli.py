"""The command line: training with resume, `list`, and one-line errors with exit status 2."""
import json
import os
import subprocess
import sys

import pytest

from jaxlab.cli import default_workdir, main
from jaxlab.train.metrics import read_jsonl

TINY = "configs/lm/gpt.py:runlocal"
MESH_4x2 = '--config.mesh=[("data",4),("fsdp",2)]'


def test_train_then_resume_repeats_and_skips_no_step(tmp_path, capsys):
    workdir = tmp_path / "run"
    args = ["train", "--config", TINY, "--workdir", str(workdir), MESH_4x2, "--no-progress"]
    assert main(args) == 0
    first = [r["step"] for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r]
    assert first == [1, 2, 3, 4, 5, 6]
    losses = [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    for name in ("config.json", "env.json"):
        assert json.loads((workdir / name).read_text())
    assert json.loads((workdir / "config.json").read_text())["model"]["depth"] == 2

    original_config = (workdir / "config.json").read_text()
    assert main(args + ["--config.train.steps=9"]) == 2  # a changed config needs permission
    assert main(args + ["--config.train.steps=9", "--config.ckpt.allow_config_change=True"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "from step 6" in out
    steps = [r["step"] for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 10))
    assert "9" in os.listdir(workdir / "checkpoints")
    assert (workdir / "config.json").read_text() == original_config
    history = json.loads((workdir / "config.resume-6.json").read_text())
    assert history["train"]["steps"] == 9


def test_resume_with_a_different_model_is_refused(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["train", "--config", TINY, "--workdir", str(workdir), "--no-progress",
                 "--config.train.steps=2"]) == 0
    before = (workdir / "metrics.jsonl").read_text()
    assert main(["train", "--config", TINY, "--workdir", str(workdir), "--no-progress",
                 "--config.model.depth=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.depth: 2 -> 3" in err and len(err.splitlines()) == 1
    assert (workdir / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("extra,message", [
    (["--config.model.dept=3"], "unknown config key 'model.dept'; valid keys at model:"),
    (["--config.model.depth=abc"], "has the wrong type: expected int"),
    (['--config.mesh=[("data",3)]'], "does not divide the 8 available devices"),
    (['--config.mesh=[("dta",8)]'], "unknown mesh axis 'dta'"),
    (["--config.train.batch_size=12"], "train.batch_size=12 (per microbatch 12) is not divisible by the 8"),
    (["--config.model.attention=nope"], "unknown attention kind 'nope'; known: "),
    (["--config.data.name=nope"], "unknown dataset 'nope'; known:"),
    (["--config.optim.name=nope"], "unknown optimizer 'nope'; known: adafactor, adamw, lamb, sgd"),
    (["--bogus"], "unrecognized argument '--bogus'"),
])
def test_user_errors_are_one_line_with_status_2(tmp_path, capsys, extra, message):
    workdir = tmp_path / "run"
    code = main(["train", "--config", TINY, "--workdir", str(workdir), "--no-progress"] + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("jaxlab: error: ") and len(err.splitlines()) == 1, err
    assert message in err, err


def test_config_arg_error_from_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "jaxlab", "train", "--config", "configs/lm/gpt.py:depht=3",
         "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == ("jaxlab: error: unknown config arg 'depht'; valid args: "
                                     "batch, depth, heads, kv_heads, runlocal, seq_len, steps, width")
    assert not (tmp_path / "w").exists()


def test_list_prints_every_config(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "configs/lm/gpt.py" in out and "configs/vision/vit_digits.py" in out


def test_default_workdir_names_the_config():
    assert str(default_workdir("configs/lm/gpt.py")) == os.path.join("runs", "lm_gpt")
    assert str(default_workdir("configs/lm/gpt.py:depth=2")) == os.path.join("runs", "lm_gpt-depth=2")
