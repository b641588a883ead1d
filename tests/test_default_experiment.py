"""The default experiment end to end (minutes; run with `python -m pytest -m slow`)."""
import jax
import pytest

from jaxlab import config as config_lib
from jaxlab.config import DEFAULT_CONFIG
from jaxlab.train.loop import train


@pytest.mark.slow
def test_default_experiment_reaches_2_5_bits_per_byte(tmp_path, fully_optimized):
    # fully_optimized: its minutes go to running steps, not compiling (278 s; 805 s without)
    # One real CPU device: the 8 fake test devices would only split the same two cores.
    config = config_lib.load(DEFAULT_CONFIG, {"mesh": [("data", 1)]})
    summary = train(config, tmp_path / "gpt", devices=jax.devices()[:1], progress=False,
                    emit=lambda _: None)
    assert summary["valid_bpb"] <= 2.5
    assert summary["steps"] == config.train.steps and summary["sample"]
