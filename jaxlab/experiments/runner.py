"""Runs an experiment's rows × seeds (reusing finished rows, resuming interrupted ones) and
collects one number per (row, metric, seed)."""
from __future__ import annotations

import json
import math
import pathlib
from typing import Callable, Sequence

import ml_collections

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.experiments.spec import Computed, Experiment, Results
from jaxlab.train.checkpoint import Checkpointer
from jaxlab.train import workdir as workdir_lib
from jaxlab.train.loop import Run, train


def select_rows(experiment: Experiment, rows: Sequence[str] | None) -> list[str]:
    if not rows:
        return list(experiment.rows)
    unknown = [r for r in rows if r not in experiment.rows]
    if unknown:
        raise ConfigError(f"unknown row {unknown[0]!r} of {experiment.name}; rows: "
                          f"{', '.join(experiment.rows)}")
    return list(rows)


def scale_of(experiment: Experiment, scale: str):
    if scale not in experiment.scales:
        raise ConfigError(f"experiment {experiment.name} has no scale {scale!r}; scales: "
                          f"{', '.join(experiment.scales)}")
    return experiment.scales[scale]


def row_config(experiment: Experiment, scale: str, row: str, seed: int):
    spec = scale_of(experiment, scale)
    overrides = experiment.rows[row]
    if isinstance(overrides, Computed):
        return ml_collections.ConfigDict({"computed": overrides.fn.__name__, **spec.params,
                                          **overrides.params, "seed": seed})
    return config_lib.load(spec.config, {**spec.overrides, **overrides, "seed": seed})


def run_row(experiment: Experiment, config, workdir: pathlib.Path,
            compute: Callable | None = None) -> dict:
    """Trains (or resumes) one row, or measures it with `compute(config)` (a Computed row),
    and returns its numbers; a finished row is read back."""
    result_path = workdir / "result.json"
    changes = workdir_lib.config_changes(workdir, config.to_dict())
    if changes and (result_path.exists() or compute is not None):
        raise ConfigError(f"{str(workdir)!r} holds this row run with another config "
                          f"({', '.join(changes[:3])}); remove it or use another --out")
    if result_path.exists():
        return json.loads(result_path.read_text())
    if compute is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        workdir_lib.write_config(workdir, config.to_dict(), None)
        result = {k: float(v) for k, v in compute(config).items()}
        return _finish(result_path, result)
    summary = train(config, workdir, progress=False, emit=lambda _: None)
    result = {k: float(v) for k, v in summary.items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None}
    if experiment.measure is not None:
        run = Run(config)
        state, _ = Checkpointer(workdir / "checkpoints").restore(run.restore_target())
        model = run.model_def.merge(state["params"], state["extra"])
        result.update({k: float(v) for k, v in experiment.measure(run, model, summary).items()})
    return _finish(result_path, result)


def _finish(result_path: pathlib.Path, result: dict) -> dict:
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True))
    tmp.replace(result_path)  # a row counts as finished only once its result is whole
    return result


def run_experiment(experiment: Experiment, *, scale: str, seeds: int, rows: Sequence[str] | None,
                   out_dir: pathlib.Path, emit: Callable[[str], None] = print) -> Results:
    chosen = select_rows(experiment, rows)
    scale_of(experiment, scale)
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds} must be at least 1")
    results: dict[str, dict[str, list[float]]] = {row: {} for row in chosen}
    total, done = len(chosen) * seeds, 0
    for row in chosen:
        for seed in range(seeds):
            done += 1
            workdir = out_dir / "runs" / f"{row}-seed{seed}"
            status = "reused" if (workdir / "result.json").exists() else "running"
            emit(f"[{done}/{total}] {experiment.name} {scale}: {row}, seed {seed} ({status})")
            spec = experiment.rows[row]
            result = run_row(experiment, row_config(experiment, scale, row, seed), workdir,
                             compute=spec.fn if isinstance(spec, Computed) else None)
            for metric, value in result.items():
                results[row].setdefault(metric, []).append(value)
    missing = [m for m in experiment.metrics if all(m not in results[r] for r in chosen)]
    if missing:
        raise ValueError(f"{experiment.name}: metrics {missing} were not measured")
    return results


def finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value)
