"""Mesh shapes, logical sharding rules and batch checks."""
import jax
import pytest
from jax.sharding import PartitionSpec as P

from jaxlab.errors import ConfigError
from jaxlab.train import mesh as mesh_lib


def test_minus_one_fills_the_remaining_devices():
    assert mesh_lib.mesh_shape([("data", -1), ("fsdp", 2)], 8) == {"data": 4, "fsdp": 2}
    assert mesh_lib.mesh_shape([("data", 2), ("fsdp", 2), ("tensor", 2)], 8) == \
        {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize("spec,message", [
    ([("data", 3)], "does not divide the 8 available devices"),
    ([("data", 4)], "must multiply to 8"),
    ([("data", -1), ("fsdp", -1)], "at most one -1"),
    ([("model", 8)], "unknown mesh axis 'model'"),
    ([("data", 4), ("data", 2)], "names an axis twice"),
    (["data"], "must be a list of \\(axis, size\\) pairs"),
])
def test_bad_meshes(spec, message):
    with pytest.raises(ConfigError, match=message):
        mesh_lib.mesh_shape(spec, 8)


def test_logical_rules_map_dims_and_replicate_what_does_not_divide():
    mesh = mesh_lib.build_mesh([("data", 2), ("fsdp", 2), ("tensor", 2)])
    rules = mesh_lib.DEFAULT_RULES
    assert mesh_lib.logical_spec(("embed", "mlp"), (8, 16), rules, mesh) == P("fsdp", "tensor")
    assert mesh_lib.logical_spec(("embed", "mlp"), (8, 3), rules, mesh) == P("fsdp", None)
    assert mesh_lib.logical_spec((None, "embed"), (5, 8), rules, mesh) == P(None, "fsdp")
    # A mesh axis is used once per array: the second "embed" dim stays whole.
    assert mesh_lib.logical_spec(("embed", "embed"), (8, 8), rules, mesh) == P("fsdp", None)
    assert mesh_lib.batch_axes(rules, mesh) == ("data", "fsdp")


def test_regex_overrides_win_and_must_fit():
    mesh = mesh_lib.build_mesh([("data", 4), ("fsdp", 2)])
    shapes = {"a": {"kernel": jax.ShapeDtypeStruct((8, 4), "float32")},
              "b": {"kernel": jax.ShapeDtypeStruct((8, 4), "float32")}}
    axes = {"a": {"kernel": ("embed", "mlp")}, "b": {"kernel": ("embed", "mlp")}}
    out = mesh_lib.param_shardings(axes, shapes, mesh, mesh_lib.DEFAULT_RULES,
                                   overrides=[(r"^b/", ("data", None))])
    assert out["a"]["kernel"].spec == P("fsdp", None)
    assert out["b"]["kernel"].spec == P("data", None)
    with pytest.raises(ConfigError, match="sharding override .* for 'a/kernel' does not fit"):
        mesh_lib.param_shardings(axes, shapes, mesh, mesh_lib.DEFAULT_RULES,
                                 overrides=[(r"^a/", (None, ("data", "fsdp")))])


def test_batch_must_divide_the_data_shards():
    mesh = mesh_lib.build_mesh([("data", 4), ("fsdp", 2)])
    mesh_lib.check_batch(16, 2, mesh_lib.DEFAULT_RULES, mesh)
    with pytest.raises(ConfigError, match="train.batch_size=12 .* not divisible by the 8 data shards"):
        mesh_lib.check_batch(12, 1, mesh_lib.DEFAULT_RULES, mesh)
    with pytest.raises(ConfigError, match="not divisible by train.grad_accum=3"):
        mesh_lib.check_batch(16, 3, mesh_lib.DEFAULT_RULES, mesh)
