"""Config files, typed args, dotted overrides and their errors."""
import pytest

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError


def test_parse_arg_types_and_flags():
    arg = config_lib.parse_arg("depth=12,runlocal,lr=1e-3,name=x", depth=4, runlocal=False,
                               lr=0.1, name="a")
    assert (arg.depth, arg.runlocal, arg.lr, arg.name) == (12, True, 1e-3, "x")


@pytest.mark.parametrize("arg,message", [
    ("dept=3", "unknown config arg 'dept'; valid args: depth, runlocal"),
    ("depth=three", "arg depth='three' has the wrong type: expected int"),
    ("depth=1.5", "expected int"),
])
def test_parse_arg_errors(arg, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.parse_arg(arg, depth=4, runlocal=False)


def test_load_with_arg_and_overrides():
    config = config_lib.load("configs/lm/gpt.py:depth=3,width=64",
                             overrides={"model.num_heads": 8, "optim.lr": "0.01",
                                        "mesh": '[("data", 4), ("fsdp", 2)]'})
    assert (config.model.depth, config.model.width, config.model.num_heads) == (3, 64, 8)
    assert config.optim.lr == 0.01
    assert [tuple(p) for p in config.mesh] == [("data", 4), ("fsdp", 2)]


@pytest.mark.parametrize("overrides,message", [
    ({"model.dept": 3}, r"unknown config key 'model.dept'; valid keys at model: .*depth"),
    ({"nope.x": 3}, r"unknown config key 'nope.x'; valid keys at the top level: .*model"),
    ({"model.depth": "deep"}, r"config key model.depth='deep' has the wrong type: expected int"),
    ({"train.steps": 2.5}, r"expected int"),
    ({"log.tensorboard": "maybe"}, r"expected bool"),
    ({"model": 3}, r"config key 'model' is a group"),
    ({"mesh": "data"}, r"expected list"),
])
def test_override_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.load("configs/lm/gpt.py:runlocal", overrides)


def test_bool_overrides_accept_words():
    config = config_lib.load("configs/lm/gpt.py:runlocal", {"log.tensorboard": "false"})
    assert config.log.tensorboard is False


def test_loaded_config_is_locked():
    config = config_lib.load("configs/lm/gpt.py:runlocal")
    with pytest.raises(AttributeError):
        config.model.new_key = 1


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file 'configs/nope.py' not found"):
        config_lib.load("configs/nope.py")


def test_list_configs_has_descriptions():
    rows = dict(config_lib.list_configs())
    assert "configs/lm/gpt.py" in rows
    assert all(rows.values()), rows
