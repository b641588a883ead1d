"""Experiments by name, discovered from the modules in experiments/ at the repository root."""
from __future__ import annotations

import importlib.util
import pathlib

from jaxlab.config import REPO_ROOT
from jaxlab.errors import ConfigError
from jaxlab.experiments.spec import Experiment

EXPERIMENTS_DIR = REPO_ROOT / "experiments"


def _load(path: pathlib.Path) -> Experiment:
    spec = importlib.util.spec_from_file_location(f"jaxlab_experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    experiment = getattr(module, "EXPERIMENT", None)
    if not isinstance(experiment, Experiment):
        raise ValueError(f"{path} defines no EXPERIMENT = Experiment(...)")
    return experiment


def all_experiments() -> dict[str, Experiment]:
    found = {}
    for path in sorted(EXPERIMENTS_DIR.glob("*.py")):
        if not path.name.startswith("_"):
            experiment = _load(path)
            found[experiment.name] = experiment
    return found


def get(name: str) -> Experiment:
    experiments = all_experiments()
    if name not in experiments:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(sorted(experiments))}")
    return experiments[name]
