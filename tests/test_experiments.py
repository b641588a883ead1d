"""Every experiment runs end to end at its smoke scale (rows, claims, table, plots), so the
reproduction machinery cannot rot; plus the claim checks and the CLI's errors."""
import json

import pytest

from jaxlab import config as config_lib
from jaxlab.cli import main
from jaxlab.errors import ConfigError
from jaxlab.experiments.report import render_table
from jaxlab.experiments.runner import run_experiment, run_row
from jaxlab.experiments import registry
from jaxlab.experiments.reproduce import reproduce
from jaxlab.experiments.spec import (FAILS, HOLDS, INCONCLUSIVE, Claim, Experiment, Scale,
                                     at_least, at_most, computed, higher, lower)

EXPERIMENTS = sorted(registry.all_experiments())
# Smoke runs that took 45-85 s each on an idle 2-core machine (several rows, each a short
# training run that is mostly compile time) run in the slow pass, which CI runs too. The default
# run keeps the cheaper ones, which cover the same machinery (trained GPT rows, rows computed
# without the trainer, claims, table, plots, reuse).
SLOW_SMOKE = {"curse_of_depth", "hopfield", "kat_vit", "linear_attention_lm",
              "linear_attention_mqar", "peri_ln", "pre_rmsnorm", "sigma_reparam",
              "small_scale_proxies", "softplus_length"}


def test_every_experiment_has_cpu_and_smoke_scales():
    assert EXPERIMENTS and SLOW_SMOKE <= set(EXPERIMENTS)  # no stale name in SLOW_SMOKE
    for name in EXPERIMENTS:
        experiment = registry.get(name)
        assert {"smoke", "cpu"} <= set(experiment.scales), name
        assert experiment.claims and experiment.metrics, name


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow if name in SLOW_SMOKE else ()) for name in EXPERIMENTS])
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
    assert "Wall time:" in table and saved["runtime"]["reused_rows"] == 0
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
    assert at_least("loss", "b", 2.0)(results).status == HOLDS
    assert at_least("loss", "a", 1.05)(results).status == FAILS


def toy_experiment(calls, **row_params):
    """Rows measured by a function: x² + seed, and a metric only rows with x > 1 have."""
    def square(p):
        calls.append((p.x, p.seed))
        return {"value": p.x ** 2 + p.seed, **({"big_only": 1.0} if p.x > 1 else {})}

    return Experiment(
        name="toy", title="toy", paper="-", scales={"smoke": Scale("", params={"x": 1})},
        rows={"one": computed(square, **row_params), "three": computed(square, x=3)},
        metrics=("value", "big_only"), claims=(Claim("three is higher", higher("value", "three", "one")),))


def test_computed_rows_run_without_the_trainer_and_are_reused(tmp_path):
    calls = []
    experiment = toy_experiment(calls)
    results = run_experiment(experiment, scale="smoke", seeds=2, rows=None, out_dir=tmp_path,
                             emit=lambda _: None)
    assert results["one"]["value"] == [1.0, 2.0] and results["three"]["value"] == [9.0, 10.0]
    assert "big_only" not in results["one"] and results["three"]["big_only"] == [1.0, 1.0]
    assert len(calls) == 4
    run_experiment(experiment, scale="smoke", seeds=2, rows=None, out_dir=tmp_path, emit=lambda _: None)
    assert len(calls) == 4  # every row reused
    table = render_table(experiment, "smoke", results, [], "cmd")
    assert "| one | 1.5 ± 0.71 | – |" in table
    # A computed row is reused only with unchanged parameters.
    with pytest.raises(ConfigError, match="holds this row run with another config"):
        run_experiment(toy_experiment(calls, x=2), scale="smoke", seeds=1, rows=None,
                       out_dir=tmp_path, emit=lambda _: None)
    # A metric that no row measures is an error.
    with pytest.raises(ValueError, match="were not measured"):
        run_experiment(experiment, scale="smoke", seeds=1, rows=["one"], out_dir=tmp_path,
                       emit=lambda _: None)


def test_mil_pooling_config_names_its_bags():
    config = config_lib.load("configs/mil/pooling.py:bags=bits")
    assert config.data.name == "bit_bags" and config.model.features == 8
    with pytest.raises(ConfigError, match="arg bags='nope' is not valid"):
        config_lib.load("configs/mil/pooling.py:bags=nope")


def test_cli_errors_and_listing(capsys, tmp_path):
    assert main(["reproduce", "--list"]) == 0
    assert "small_scale_proxies" in capsys.readouterr().out
    assert main(["reproduce", "nope"]) == 2
    assert "unknown experiment 'nope'; known:" in capsys.readouterr().err
    assert main(["reproduce", EXPERIMENTS[0], "--scale", "huge", "--out", str(tmp_path)]) == 2
    assert "has no scale 'huge'; scales:" in capsys.readouterr().err
    assert main(["reproduce", EXPERIMENTS[0], "--rows", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown row 'nope'" in capsys.readouterr().err
