"""The MIL classifier (HopfieldPooling, mean and max pooling): masking, permutation invariance,
and learning bit_bags."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.models import build
from jaxlab.train.loop import train


@pytest.mark.parametrize("pooling", ["hopfield", "mean", "max"])
def test_mil_model_ignores_padding_and_instance_order(pooling):
    cfg = config_lib.load("configs/mil/pooling.py:runlocal", {"model.pooling": pooling}).model
    model = build(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(0)
    bags = rng.random((4, 16, 65)).astype(np.float32)
    bags[:, :, -1] = (np.arange(16) < 9).astype(np.float32)
    model = jax.jit(lambda x, m=model: m(x))
    logits = model(jnp.asarray(bags))
    assert logits.shape == (4, 2)
    padded = bags.copy()
    padded[:, 9:, :-1] = 7.0  # garbage in masked slots
    np.testing.assert_allclose(model(jnp.asarray(padded)), logits, atol=1e-5)
    order = rng.permutation(16)
    np.testing.assert_allclose(model(jnp.asarray(bags[:, order])), logits, atol=1e-5)


@pytest.mark.slow  # ~12 s on an idle 2-core CPU
def test_mil_learns_bit_bags_above_95_percent(tmp_path):
    config = config_lib.load("configs/mil/bit_bags.py:steps=200")
    config.train.eval_every = 200
    train(config, tmp_path / "run", progress=False, emit=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    valid = [row["valid_accuracy"] for row in rows if "valid_accuracy" in row]
    assert valid and valid[-1] > 0.95


def test_mil_runlocal_trains_on_an_8_device_mesh(tmp_path):
    config = config_lib.load("configs/mil/digit_bags.py:runlocal",
                             {"mesh": [("data", 4), ("fsdp", 2)]})
    summary = train(config, tmp_path / "run", progress=False, emit=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(jax.devices()) == 8 and summary
    assert all(np.isfinite(row["loss"]) for row in rows if "loss" in row)


def test_empty_bags_pool_to_finite_values_and_unknown_poolings_are_refused():
    bags = np.zeros((1, 4, 65), np.float32)
    bags[0, :2, -1] = 1.0
    for pooling in ("mean", "max"):
        cfg = config_lib.load("configs/mil/pooling.py:runlocal", {"model.pooling": pooling}).model
        model = build(cfg, nnx.Rngs(0))
        empty = jnp.asarray(np.zeros((1, 4, 65), np.float32))  # no real instance at all
        assert bool(jnp.all(jnp.isfinite(model(empty))))
        assert model(jnp.asarray(bags)).shape == (1, 2)
    cfg = config_lib.load("configs/mil/pooling.py:runlocal", {"model.pooling": "sum"}).model
    with pytest.raises(ConfigError, match="model.pooling='sum' is unknown"):
        build(cfg, nnx.Rngs(0))
