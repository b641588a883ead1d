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


def test_add_a_reproduction_guide_runs_and_judges_its_claims(tmp_path, monkeypatch):
    import json
    import shlex

    from jaxlab.cli import main
    from jaxlab.experiments import registry
    from jaxlab.experiments.spec import HOLDS, INCONCLUSIVE, FAILS

    guide = DOCS / "add_a_reproduction.md"
    (module_code,) = code_blocks(guide, "python")
    name = re.search(r"Save it as `experiments/(\w+)\.py`", guide.read_text()).group(1)
    experiments_dir = tmp_path / "experiments"
    experiments_dir.mkdir()
    (experiments_dir / f"{name}.py").write_text(module_code)
    monkeypatch.setattr(registry, "EXPERIMENTS_DIR", experiments_dir)
    experiment = registry.get(name)
    assert experiment.name == name and {"smoke", "cpu"} <= set(experiment.scales)

    (command,) = code_blocks(guide, "bash")
    argv = shlex.split(command.strip())
    assert argv[:3] == ["jaxlab", "reproduce", name] and "smoke" in argv
    assert main(argv[1:] + ["--out", str(tmp_path / "out")]) == 0

    out_dir = tmp_path / "out" / name / "smoke"
    table = (out_dir / "table.md").read_text()
    assert all(f"| {row} |" in table for row in experiment.rows)
    saved = json.loads((out_dir / "results.json").read_text())
    assert set(saved["results"]) == set(experiment.rows)
    assert all(len(v) == 1 for row in saved["results"].values() for v in row.values())
    # The saved verdicts are the claims' checks applied to the saved numbers.
    assert [c["verdict"] for c in saved["claims"]] == [
        claim.check(saved["results"]).status for claim in experiment.claims]
    assert all(c["verdict"] in (HOLDS, FAILS, INCONCLUSIVE) for c in saved["claims"])
    assert saved["claims"][0]["verdict"] == HOLDS  # equal parameter counts, by construction
    assert (out_dir / f"{experiment.metrics[0]}.png").stat().st_size > 0
