"""The guides in docs/ work when followed step by step."""
import pathlib
import re

from jaxlab import config as config_lib
from jaxlab.registry import FFN
from tests.train.helpers import run_steps
from jaxlab.train.loop import Run

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def code_blocks(path: pathlib.Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), re.S)


def test_add_a_layer_guide_registers_a_kind_that_trains():
    guide = DOCS / "add_a_layer.md"
    (module_code,) = code_blocks(guide, "python")
    exec(compile(module_code, str(guide), "exec"), {"__name__": "guide_layer"})
    assert "relu2" in FFN
    (command,) = code_blocks(guide, "bash")
    spec = re.search(r"--config (\S+)", command).group(1)
    overrides = dict(re.findall(r"--config\.(\S+?)=(\S+)", command))
    assert overrides == {"model.ffn": "relu2"}
    run = Run(config_lib.load(spec, {**overrides, "mesh": [("data", -1)]}))
    _, losses = run_steps(run, run.init(), 0, 3)
    assert losses[-1] < losses[0]
