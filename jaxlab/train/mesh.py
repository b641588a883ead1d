"""Device mesh from `config.mesh` and logical-axis sharding rules for parameters and batches.

`config.mesh` is a list of (axis, size) pairs over the axes data/fsdp/tensor, one size may be -1
to take the remaining devices. Parameters name their dimensions with logical axes ("embed",
"mlp", "heads", "vocab"); `config.sharding.rules` maps each logical axis to mesh axes, and
`config.sharding.overrides` (regex on the parameter path -> mesh axes per dim) wins over the rules.
"""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jaxlab.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
)


def mesh_shape(spec: Sequence[Sequence[Any]], device_count: int) -> dict[str, int]:
    """Validated {axis: size} with -1 filled; the sizes multiply to `device_count`."""
    try:
        pairs = [(str(name), int(size)) for name, size in spec]
    except (TypeError, ValueError):
        raise ConfigError(f"mesh {spec!r} must be a list of (axis, size) pairs, "
                          f"e.g. [('data', -1), ('fsdp', 2)]") from None
    names = [name for name, _ in pairs]
    for name in names:
        if name not in MESH_AXES:
            raise ConfigError(f"unknown mesh axis {name!r} in {spec!r}; valid axes: {', '.join(MESH_AXES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"mesh {spec!r} names an axis twice")
    fills = [name for name, size in pairs if size == -1]
    if len(fills) > 1 or any(size == 0 or size < -1 for _, size in pairs):
        raise ConfigError(f"mesh {spec!r}: sizes must be positive, with at most one -1")
    known = math.prod(size for _, size in pairs if size != -1)
    if device_count % known or (not fills and known != device_count):
        raise ConfigError(
            f"mesh {spec!r} does not divide the {device_count} available devices; "
            f"the sizes must multiply to {device_count} (use -1 for one axis to fill)")
    return {name: (device_count // known if size == -1 else size) for name, size in pairs}


def build_mesh(spec: Sequence[Sequence[Any]], devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(spec, len(devices))
    return jax.make_mesh(tuple(shape.values()), tuple(shape), devices=devices,
                         axis_types=(AxisType.Auto,) * len(shape))


def _mesh_axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def logical_spec(axes: Sequence[str | None], shape: Sequence[int], rules: Sequence[Sequence[Any]],
                 mesh: jax.sharding.Mesh) -> PartitionSpec:
    """PartitionSpec for one array: each logical axis takes its rule's mesh axes that exist in the
    mesh, are not used by an earlier dimension and divide the dimension; otherwise it replicates."""
    table = {name: _mesh_axes(target) for name, target in rules}
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        chosen = []
        for axis in table.get(name, ()) if name is not None else ():
            size = mesh.shape.get(axis)
            if size is None or axis in used:
                continue
            if dim % (math.prod(mesh.shape[a] for a in chosen) * size) == 0:
                chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def fits(spec: PartitionSpec, shape: Sequence[int], mesh: jax.sharding.Mesh) -> bool:
    named = [a for entry in spec for a in _mesh_axes(entry)]
    if len(spec) > len(shape) or any(a not in mesh.shape for a in named):
        return False
    return all(dim % math.prod(mesh.shape[a] for a in _mesh_axes(entry)) == 0
               for entry, dim in zip(spec, shape))


def path_name(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def param_shardings(axes_tree: Any, shapes_tree: Any, mesh: jax.sharding.Mesh,
                    rules: Sequence[Sequence[Any]], overrides: Sequence[Sequence[Any]] = ()) -> Any:
    """NamedSharding per parameter. `axes_tree` holds a tuple of logical names per leaf (same
    structure as `shapes_tree`, whose leaves have `.shape`)."""
    compiled = [(re.compile(pattern), PartitionSpec(*target)) for pattern, target in overrides]
    flat_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes_tree)
    flat_axes = treedef.flatten_up_to(axes_tree)
    shardings = []
    for (path, leaf), axes in zip(flat_shapes, flat_axes):
        name = path_name(path)
        spec = next((s for pattern, s in compiled if pattern.search(name)), None)
        if spec is not None and not fits(spec, leaf.shape, mesh):
            raise ConfigError(f"sharding override {spec} for {name!r} does not fit its shape "
                              f"{tuple(leaf.shape)} on mesh {dict(mesh.shape)}")
        if spec is None:
            spec = logical_spec(axes or (None,) * len(leaf.shape), leaf.shape, rules, mesh)
        shardings.append(NamedSharding(mesh, spec))
    return jax.tree.unflatten(treedef, shardings)


def batch_axes(rules: Sequence[Sequence[Any]], mesh: jax.sharding.Mesh) -> tuple[str, ...]:
    """Mesh axes the batch dimension is split over (the rule for logical axis "batch")."""
    table = {name: _mesh_axes(target) for name, target in rules}
    return tuple(a for a in table.get("batch", ()) if a in mesh.shape)


def batch_sharding(rules, mesh: jax.sharding.Mesh) -> NamedSharding:
    axes = batch_axes(rules, mesh)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def check_batch(batch_size: int, grad_accum: int, rules, mesh: jax.sharding.Mesh) -> None:
    axes = batch_axes(rules, mesh)
    shards = math.prod(mesh.shape[a] for a in axes)
    if grad_accum < 1 or batch_size % grad_accum:
        raise ConfigError(f"train.batch_size={batch_size} is not divisible by "
                          f"train.grad_accum={grad_accum}")
    if (batch_size // grad_accum) % shards:
        raise ConfigError(
            f"train.batch_size={batch_size} (per microbatch {batch_size // grad_accum}) is not "
            f"divisible by the {shards} data shards of mesh axes {axes}; use a multiple of {shards}")


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Addressable bytes each device holds for the arrays of `tree`."""
    totals: dict[Any, int] = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            totals[shard.device] = totals.get(shard.device, 0) + shard.data.nbytes
    return totals


def to_global(local_batch: dict[str, np.ndarray], sharding: NamedSharding,
              process_count: int) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global jax.Arrays split over the batch axes."""
    def one(x):
        global_shape = (x.shape[0] * process_count,) + x.shape[1:]
        return jax.make_array_from_process_local_data(sharding, x, global_shape)
    return {k: one(v) for k, v in local_batch.items()}
