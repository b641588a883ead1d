"""function_fit: the KAN paper's toy regressions, y = f(x) with x uniform in [−1, 1]^d.

Functions (data.function): exp_sin_sq = exp(sin(πx) + y²), bessel = J0(20x), product = x·y.
A fixed pool of `num_train` training points and `num_valid` valid points is drawn once from
`pool_seed`; batches sample a split with replacement. Targets are float32 scalars, for the
`mse` loss (accuracy means nothing here).
"""
from __future__ import annotations

import functools

import numpy as np

from jaxlab.data.base import SampledArrays, int_field
from jaxlab.errors import ConfigError
from jaxlab.registry import DATASETS


def _bessel(x):
    from scipy.special import j0  # scipy comes with scikit-learn
    return j0(20 * x[:, 0])


FUNCTIONS = {
    "exp_sin_sq": (2, lambda x: np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2)),
    "bessel": (1, _bessel),
    "product": (2, lambda x: x[:, 0] * x[:, 1]),
}


@functools.lru_cache(maxsize=8)
def function_pool(function: str, num_train: int, num_valid: int, pool_seed: int):
    dim, fn = FUNCTIONS[function]
    rng = np.random.default_rng(pool_seed)
    out = {}
    for split, n in (("train", num_train), ("valid", num_valid)):
        x = rng.uniform(-1, 1, size=(n, dim))
        out[split] = (x.astype(np.float32), fn(x).astype(np.float32))
    return out


@DATASETS.register("function_fit")
class FunctionFit(SampledArrays):
    """Config: function (exp_sin_sq), num_train (1000), num_valid (1000), pool_seed (0)."""
    name = "function_fit"
    task = "regression"

    def __init__(self, cfg):
        self.function = cfg.get("function", "exp_sin_sq")
        if self.function not in FUNCTIONS:
            raise ConfigError(f"data.function={self.function!r} is not known; valid: "
                              f"{', '.join(sorted(FUNCTIONS))}")
        self.dim = FUNCTIONS[self.function][0]
        self.splits = function_pool(self.function, int_field(cfg, "num_train", 1000),
                                    int_field(cfg, "num_valid", 1000),
                                    int_field(cfg, "pool_seed", 0, minimum=0))

    def example_spec(self):
        return {"inputs": ((self.dim,), np.dtype(np.float32)),
                "targets": ((), np.dtype(np.float32)),
                "weights": ((), np.dtype(np.float32))}

    def source_facts(self):
        return {"source": "synthetic function fitting", "function": self.function,
                "examples": {name: int(len(y)) for name, (_, y) in self.splits.items()}}
