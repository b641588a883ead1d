"""The catalogue of bad inputs: each case is a `jaxlab` command line (and the files it meets)
with the message it must give. tests/test_bad_inputs.py runs every case; `python -m
tests.bad_inputs` rewrites docs/errors.md from what the cases print today."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import tempfile
from typing import Callable

from jaxlab import config as config_lib
from jaxlab.cli import main

TINY = "configs/lm/gpt.py:runlocal"
COPY = "configs/synthetic/copy.py:runlocal"
TEXT = "configs/lm/text.py:runlocal"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]          # after `jaxlab train --workdir W`; {dir} is a scratch folder
    expect: str                    # a part of the one-line message
    setup: Callable[[pathlib.Path], None] | None = None   # prepares {dir} (files, a workdir)
    command: str = "train"


def write(name: str, content: bytes) -> Callable[[pathlib.Path], None]:
    return lambda d: (d / name).write_bytes(content)


def existing_run(d: pathlib.Path) -> None:
    (d / "run").mkdir()
    config = config_lib.load(TINY, {"model.depth": 3}).to_dict()
    (d / "run" / "config.json").write_text(json.dumps(config))


def live_lock(d: pathlib.Path) -> None:
    (d / "run").mkdir()
    (d / "run" / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))


def dangling_link(d: pathlib.Path) -> None:
    os.symlink(d / "gone.txt", d / "link.txt")


def trained_copy_run(d: pathlib.Path) -> None:
    assert main(["train", "--config", COPY, "--workdir", str(d / "run"), "--no-progress",
                 "--config.train.steps=2"]) == 0


CASES = [
    # config files and args
    Case("config file missing", ("--config", "configs/nope.py"), "config file 'configs/nope.py' not found"),
    Case("config arg unknown", ("--config", "configs/lm/gpt.py:dept=2"), "unknown config arg 'dept'; valid args:"),
    Case("config arg wrong type", ("--config", "configs/lm/gpt.py:depth=two"), "arg depth='two' has the wrong type: expected int"),
    # overrides and flags
    Case("override key unknown", ("--config.model.dept=2",), "unknown config key 'model.dept'; valid keys at model:"),
    Case("override group unknown", ("--config.modle.depth=2",), "unknown config key 'modle.depth'; valid keys at the top level:"),
    Case("override wrong type", ("--config.train.steps=many",), "config key train.steps='many' has the wrong type: expected int"),
    Case("override float for int", ("--config.train.steps=2.5",), "has the wrong type: expected int"),
    Case("override bool word", ("--config.log.sample=perhaps",), "has the wrong type: expected bool"),
    Case("override a whole group", ("--config.model=3",), "config key 'model' is a group; set one of:"),
    Case("override without value", ("--config.train.steps",), "--config.train.steps needs a value"),
    Case("unknown flag", ("--bogus",), "unrecognized argument '--bogus'"),
    # registry names
    Case("attention kind unknown", ("--config.model.attention=sofmax",), "unknown attention kind 'sofmax'; known:"),
    Case("ffn kind unknown", ("--config.model.ffn=moe",), "unknown ffn kind 'moe'; known:"),
    Case("norm kind unknown", ("--config.model.norm=batchnorm",), "unknown norm kind 'batchnorm'; known:"),
    Case("norm position unknown", ("--config.model.norm_position=middle",), "unknown norm position 'middle'; known:"),
    Case("position encoding unknown", ("--config.model.position=alibi",), "unknown position encoding 'alibi'; known:"),
    Case("activation unknown", ("--config.model.activation=swish2",), "unknown activation 'swish2'; known:"),
    Case("dataset unknown", ("--config.data.name=c4",), "unknown dataset 'c4'; known:"),
    Case("optimizer unknown", ("--config.optim.name=adam",), "unknown optimizer 'adam'; known: adafactor, adamw, lamb, sgd"),
    Case("schedule unknown", ("--config.optim.schedule=cos",), "unknown schedule 'cos'; known:"),
    Case("loss unknown", ("--config.train.loss=mae",), "unknown loss 'mae'; known: mse, xent"),
    Case("regression data with a classification loss", ("--config", "configs/kan/fit.py:runlocal",
                                                         "--config.train.loss=xent"),
         "is a regression task; set train.loss=mse"),
    Case("non-finite policy unknown", ("--config.train.nonfinite=ignore",), "train.nonfinite='ignore' is not a policy; valid: halt, skip"),
    # values
    Case("learning rate not positive", ("--config.optim.lr=-1.0",), "optim.lr=-1.0 must be positive"),
    Case("steps zero", ("--config.train.steps=0",), "train.steps=0 must be a positive integer"),
    Case("eval interval zero", ("--config.train.eval_every=0",), "train.eval_every=0 must be a positive integer"),
    Case("dtype unknown", ("--config.model.dtype=float12",), "model.dtype='float12' is not supported; valid: float32, bfloat16, float16"),
    Case("width not divisible by heads", ("--config.model.width=31",), "model.width=31 is not divisible by model.num_heads=2"),
    Case("odd head dim with rotary positions", ("--config.model.width=30",), "rotary positions need an even head dim"),
    Case("heads not a multiple of kv heads", ("--config.model.num_kv_heads=3",), "model.num_heads=2 is not a multiple of model.num_kv_heads=3"),
    Case("vocabulary too small for the data", ("--config.model.vocab_size=100",), "model.vocab_size=100 is smaller than dataset 'pysrc' vocabulary of 256"),
    Case("learned positions shorter than sequences", ("--config.model.position=learned", "--config.model.max_len=16"), "model.max_len=16 is shorter than data.seq_len=32"),
    # mesh and batch
    Case("mesh does not divide the devices", ('--config.mesh=[("data", 3)]',), "does not divide the 8 available devices"),
    Case("mesh axis unknown", ('--config.mesh=[("model", 8)]',), "unknown mesh axis 'model'"),
    Case("mesh with two fills", ('--config.mesh=[("data", -1), ("fsdp", -1)]',), "sizes must be positive, with at most one -1"),
    Case("mesh not a list of pairs", ('--config.mesh=["data"]',), "must be a list of (axis, size) pairs"),
    Case("batch not divisible by the data shards", ("--config.train.batch_size=12",), "train.batch_size=12 (per microbatch 12) is not divisible by the 8 data shards"),
    Case("batch not divisible by accumulation", ("--config.train.grad_accum=3",), "train.batch_size=16 is not divisible by train.grad_accum=3"),
    # data files
    Case("text file missing", ("--config", TEXT, "--config.data.path={dir}/none.txt"), "none.txt does not exist"),
    Case("text file empty", ("--config", TEXT, "--config.data.path={dir}/empty.txt"), "is empty", write("empty.txt", b"")),
    Case("text file binary", ("--config", TEXT, "--config.data.path={dir}/blob.bin"), "blob.bin is not valid UTF-8 text (byte 1)", write("blob.bin", b"a\xff\xfe" * 100)),
    Case("text file shorter than a sequence", ("--config", TEXT, "--config.data.path={dir}/short.txt"), "fewer than data.seq_len + 1 = 33", write("short.txt", b"hello world\n")),
    Case("text file behind a dangling link", ("--config", TEXT, "--config.data.path={dir}/link.txt"), "link.txt does not exist", dangling_link),
    Case("text path not given", ("--config", TEXT), "data.path is ''; set it to a UTF-8 text file or folder"),
    Case("text folder with no files", ("--config", TEXT, "--config.data.path={dir}"), "has no regular files matching data.glob"),
    Case("mqar sequence too short", ("--config.data.name=mqar", "--config.data.seq_len=8"), "data.seq_len 8 is too short for 8 pairs"),
    # workdirs and checkpoints
    Case("workdir is a file", ("--workdir", "{dir}/afile"), "is a file, not a directory", write("afile", b"x")),
    Case("workdir config.json is not JSON", ("--workdir", "{dir}/run"), "config.json' is not valid JSON",
         lambda d: ((d / "run").mkdir(), (d / "run" / "config.json").write_text("{oops"))),
    Case("workdir holds a different run", ("--workdir", "{dir}/run"), "holds a run with a different config", existing_run),
    Case("workdir in use by a live process", ("--workdir", "{dir}/run"), "is in use by process", live_lock),
    Case("checkpoint of another model", ("--config", COPY, "--workdir", "{dir}/run", "--config.model.width=48",
                                         "--config.ckpt.allow_config_change=True"),
         "does not fit this model/optimizer: params/", trained_copy_run),
    Case("list with arguments", ("extra",), "unrecognized arguments 'extra' for `jaxlab list`", command="list"),
]


def case_argv(case: Case) -> list[str]:
    """The whole command line; a case's own --config/--workdir replace the defaults."""
    if case.command == "list":
        return ["list", *case.args]
    defaults = {"--config": TINY, "--workdir": "{dir}/w"}
    argv = ["train"]
    for flag, value in defaults.items():
        if flag not in case.args:
            argv += [flag, value]
    return argv + ["--no-progress", *case.args]


def run_case(case: Case, scratch: pathlib.Path) -> tuple[int, str]:
    """(exit status, stderr) of the case's command run in-process against `scratch`."""
    argv = [a.replace("{dir}", str(scratch)) for a in case_argv(case)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        if case.setup:  # inside the redirect: a setup that trains must not print into the doc
            case.setup(scratch)
        err.seek(0)
        err.truncate()
        code = main(argv)
    return code, err.getvalue().replace(str(scratch), "<dir>").strip()


def render() -> str:
    rows = ["# Bad inputs and what jaxlab says", "",
            "Every row is a test (`tests/test_bad_inputs.py`): the command exits with status 2, "
            "prints this one line and no traceback, and leaves the files it found as they were. "
            "Regenerate with `python -m tests.bad_inputs > docs/errors.md` (8 fake CPU devices).",
            "", "| # | bad input | command (after `jaxlab`) | message |", "|---|---|---|---|"]
    for i, case in enumerate(CASES, 1):
        with tempfile.TemporaryDirectory() as tmp:
            code, err = run_case(case, pathlib.Path(tmp))
        command = " ".join(a.replace("{dir}", "<dir>") for a in case_argv(case) if a != "--no-progress")
        message = err.replace("|", "\\|")
        rows.append(f"| {i} | {case.name} | `{command}` | {message} (exit {code}) |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    print(render(), end="")
