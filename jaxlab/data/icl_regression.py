"""icl_regression: in-context linear regression (von Oswald et al. 2023, "Transformers learn
in-context by gradient descent").

Each example draws a task w ~ N(0, I) in R^x_dim and num_examples + 1 points x ~ U(-1, 1)^x_dim
with y = w·x (+ Gaussian noise of std `noise`). inputs are the tokens e_j = (x_j, y_j), the last
one the query with its y slot zeroed; targets is the query's y. task = "regression": this
dataset feeds the LSA studies (jaxlab/ops/attention_variants.py), not the token trainer.

Config: x_dim (4), num_examples (16), noise (0.0).
"""
from __future__ import annotations

import numpy as np

from jaxlab.data.base import Dataset, int_field
from jaxlab.errors import ConfigError
from jaxlab.registry import DATASETS


class ICLRegression(Dataset):
    name = "icl_regression"
    task = "regression"

    def __init__(self, x_dim: int, num_examples: int, noise: float):
        self.x_dim, self.num_examples, self.noise = x_dim, num_examples, noise

    def example_spec(self):
        f32 = np.dtype(np.float32)
        return {"inputs": ((self.num_examples + 1, self.x_dim + 1), f32),
                "targets": ((1,), f32), "weights": ((1,), f32)}

    def _make_rows(self, split, rng, batch_size, rows):
        n = self.num_examples + 1
        w = rng.standard_normal((batch_size, self.x_dim))
        x = rng.uniform(-1.0, 1.0, (batch_size, n, self.x_dim))
        y = np.einsum("bnd,bd->bn", x, w) + self.noise * rng.standard_normal((batch_size, n))
        tokens = np.concatenate([x, y[..., None]], axis=-1)[rows]
        target = tokens[:, -1, -1:].copy()
        tokens[:, -1, -1] = 0.0  # the query's answer is what the model must produce
        return {"inputs": tokens.astype(np.float32), "targets": target.astype(np.float32),
                "weights": np.ones((len(target), 1), np.float32)}

    def source_facts(self):
        return {"x_dim": self.x_dim, "num_examples": self.num_examples, "noise": self.noise}


@DATASETS.register("icl_regression")
def icl_regression(cfg) -> ICLRegression:
    noise = cfg.get("noise", 0.0)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise ConfigError(f"data.noise must be a non-negative number, got {noise!r}.")
    return ICLRegression(int_field(cfg, "x_dim", 4), int_field(cfg, "num_examples", 16),
                         float(noise))
