"""Every config file builds with `runlocal` and traces a train step without running it."""
import jax
import pytest

from jaxlab import config as config_lib
from jaxlab.train.loop import Run

CONFIGS = [path for path, _ in config_lib.list_configs()]


def test_configs_found():
    assert "configs/lm/gpt.py" in CONFIGS and len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_and_traces_a_step(path, tmp_path):
    config = config_lib.load(f"{path}:runlocal")
    if "path" in config.data:  # configs over the user's own files get a small one
        text = tmp_path / "corpus.txt"
        text.write_text("def f(x):\n    return x + 1\n" * 200)
        config = config_lib.load(f"{path}:runlocal", {"data.path": str(text)})
    module_doc = config_lib.load_module(config_lib.resolve_path(path)).__doc__
    assert "jaxlab train --config " + path in module_doc, "docstring must hold the command"
    run = Run(config)
    batch = run.batch("train", 0)
    new_state, metrics = jax.eval_shape(run.train_step, run.abstract_state, batch)
    assert jax.tree.structure(new_state) == jax.tree.structure(run.abstract_state)
    assert metrics["loss"].shape == ()
