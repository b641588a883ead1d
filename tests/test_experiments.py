"""Every experiment runs end to end at its smoke scale (rows, claims, table, plots), so the
reproduction machinery cannot rot; plus the claim checks and the CLI's errors."""
import json

import pytest

from jaxlab import config as config_lib
from jaxlab.cli import main
from jaxlab.errors import ConfigError
from jaxlab.experiments.runner import run_row
from jaxlab.experiments import registry
from jaxlab.experiments.reproduce import reproduce
from jaxlab.experiments.spec import FAILS, HOLDS, INCONCLUSIVE, at_most, higher, lower

EXPERIMENTS = sorted(registry.all_experiments())


def test_every_experiment_has_cpu_and_smoke_scales():
    assert EXPERIMENTS
    for name in EXPERIMENTS:
        experiment = registry.get(name)
        assert {"smoke", "cpu"} <= set(experiment.scales), name
        assert experiment.claims and experiment.metrics, name


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_runs_end_to_end_at_smoke_scale(name, tmp_path):
    lines = []
    outcome = reproduce(name, scale="smoke", seeds=1, out=tmp_path, emit=lines.append)
    out_dir = outcome["out_dir"]
    table = (out_dir / "table.md").read_text()
    experiment = registry.get(name)
    for row in experiment.rows:
        assert f"| {row} |" in table
    assert len(outcome["verdicts"]) == len(experiment.claims)
    assert all(v.status in (HOLDS, FAILS, INCONCLUSIVE) for _, v in outcome["verdicts"])
    saved = json.loads((out_dir / "results.json").read_text())
    assert saved["claims"] and set(saved["results"]) == set(experiment.rows)
    assert (out_dir / f"{experiment.metrics[0]}.png").stat().st_size > 0
    # A second call reuses every finished row instead of training again...
    again = []
    reproduce(name, scale="smoke", seeds=1, out=tmp_path, emit=again.append)
    assert all("(reused)" in line for line in again if line.startswith("["))
    # ...but never a row whose config has changed since.
    row = next(iter(experiment.rows))
    changed = config_lib.load("configs/lm/gpt.py:runlocal", {"seed": 5})
    with pytest.raises(ConfigError, match="holds this row run with another config"):
        run_row(experiment, changed, out_dir / "runs" / f"{row}-seed0")


def test_lower_is_judged_against_the_seed_spread():
    results = {"a": {"loss": [1.0, 1.1]}, "b": {"loss": [2.0, 2.1]}, "c": {"loss": [1.05, 1.0]}}
    assert lower("loss", "a", "b")(results).status == HOLDS
    assert lower("loss", "b", "a")(results).status == FAILS
    assert lower("loss", "a", "c")(results).status == INCONCLUSIVE
    assert higher("loss", "b", "a")(results).status == HOLDS
    assert higher("loss", "a", "b")(results).status == FAILS
    assert at_most("loss", "a", 1.2)(results).status == HOLDS
    assert at_most("loss", "b", 1.2)(results).status == FAILS


def test_cli_errors_and_listing(capsys, tmp_path):
    assert main(["reproduce", "--list"]) == 0
    assert "small_scale_proxies" in capsys.readouterr().out
    assert main(["reproduce", "nope"]) == 2
    assert "unknown experiment 'nope'; known:" in capsys.readouterr().err
    assert main(["reproduce", EXPERIMENTS[0], "--scale", "huge", "--out", str(tmp_path)]) == 2
    assert "has no scale 'huge'; scales:" in capsys.readouterr().err
    assert main(["reproduce", EXPERIMENTS[0], "--rows", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown row 'nope'" in capsys.readouterr().err
