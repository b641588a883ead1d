"""The default experiment end to end (minutes; run with `python -m pytest -m slow`)."""
import jax
import pytest

from jaxlab import config as config_lib
from jaxlab.config import DEFAULT_CONFIG
from jaxlab.train.loop import train


@pytest.fixture
def fully_optimized():
    """This test's minutes are spent running steps, not compiling them, so it gets back the
    optimization that conftest turns off for short tests: without it, 805 s instead of 300."""
    flag = "jax_disable_most_optimizations"
    was = jax.config.values[flag]
    jax.config.update(flag, False)
    yield
    jax.config.update(flag, was)


@pytest.mark.slow
def test_default_experiment_reaches_2_5_bits_per_byte(tmp_path, fully_optimized):
    # One real CPU device: the 8 fake test devices would only split the same two cores.
    config = config_lib.load(DEFAULT_CONFIG, {"mesh": [("data", 1)]})
    summary = train(config, tmp_path / "gpt", devices=jax.devices()[:1], progress=False,
                    emit=lambda _: None)
    assert summary["valid_bpb"] <= 2.5
    assert summary["steps"] == config.train.steps and summary["sample"]
