"""Datasets by name: build_dataset(data_cfg) -> Dataset (see base.py for the contract).

Importing the dataset modules here is what registers them: the DATASETS
registry imports this package on its first lookup.
"""
from __future__ import annotations

from typing import Any

from jaxlab.data import digits, pysrc, synthetic, text_file  # noqa: F401  (registration)
from jaxlab.data import icl_regression  # noqa: F401  (registration)
from jaxlab.data import bags, function_fit, tabular  # noqa: F401  (registration)
from jaxlab.data.base import SPLITS, Dataset
from jaxlab.errors import ConfigError
from jaxlab.registry import DATASETS

__all__ = ["Dataset", "SPLITS", "build_dataset"]


def build_dataset(data_cfg: Any) -> Dataset:
    name = data_cfg.get("name", None)
    if not name:
        raise ConfigError(f"data.name is {name!r}; set it to one of: {', '.join(DATASETS.names())}.")
    return DATASETS.get(name)(data_cfg)
