"""The HopfieldLayer classifier on scikit-learn's bundled tables."""
import json

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxlab import config as config_lib
from jaxlab.data import build_dataset
from jaxlab.errors import ConfigError
from jaxlab.train.loop import train


def test_tabular_data_is_standardised_and_split():
    ds = build_dataset(ConfigDict({"name": "tabular", "source": "breast_cancer"}))
    x, y = ds.splits["train"]
    assert ds.num_classes == 2 and x.shape[1] == 30 and len(ds.splits["valid"][1]) == 114
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1.0, atol=1e-4)
    with pytest.raises(ConfigError, match="source"):
        build_dataset(ConfigDict({"name": "tabular", "source": "titanic"}))


@pytest.mark.slow
def test_hopfield_lookup_learns_iris(tmp_path):
    config = config_lib.load("configs/hopfield/tabular.py:source=iris,steps=200")
    config.train.eval_every = 200
    train(config, tmp_path / "run", progress=False, emit=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = [row["valid_accuracy"] for row in rows if "valid_accuracy" in row]
    assert valid and valid[-1] > 0.9
