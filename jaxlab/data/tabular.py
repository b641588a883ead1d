"""tabular: scikit-learn's bundled small tables (iris, wine, breast_cancer), no download.

Features are standardised with the train split's mean and standard deviation. The split is
fixed (a seed-0 permutation, the last `valid_fraction` of it valid) whatever the run
seed; batches sample a split with replacement, like `digits`.

Config: source (iris), valid_fraction (0.2).
"""
from __future__ import annotations

import functools

import numpy as np

from jaxlab.data.base import SampledArrays, fraction_field
from jaxlab.errors import ConfigError
from jaxlab.registry import DATASETS

SOURCES = ("iris", "wine", "breast_cancer")


@functools.lru_cache(maxsize=8)
def load_table(source: str, valid_fraction: float):
    import sklearn.datasets
    raw = getattr(sklearn.datasets, f"load_{source}")()
    x, y = raw.data.astype(np.float64), raw.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(y))
    num_valid = max(1, int(round(len(y) * valid_fraction)))
    train, valid = order[:-num_valid], order[-num_valid:]
    mean, std = x[train].mean(0), x[train].std(0) + 1e-8
    x = ((x - mean) / std).astype(np.float32)
    return {"train": (x[train], y[train]), "valid": (x[valid], y[valid])}, int(y.max()) + 1


@DATASETS.register("tabular")
class Tabular(SampledArrays):
    name = "tabular"
    task = "classification"

    def __init__(self, cfg):
        self.source = cfg.get("source", "iris")
        if self.source not in SOURCES:
            raise ConfigError(f"data.source={self.source!r} is not a bundled table; valid: "
                              f"{', '.join(SOURCES)}")
        self.splits, self.num_classes = load_table(self.source,
                                                   fraction_field(cfg, "valid_fraction", 0.2))

    def example_spec(self):
        return {"inputs": ((self.splits["train"][0].shape[1],), np.dtype(np.float32)),
                "targets": ((), np.dtype(np.int32)),
                "weights": ((), np.dtype(np.float32))}

    def source_facts(self):
        import sklearn
        return {"source": f"sklearn.datasets.load_{self.source}", "sklearn_version": sklearn.__version__,
                "examples": {name: int(len(y)) for name, (_, y) in self.splits.items()}}
