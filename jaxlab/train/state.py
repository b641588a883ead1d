"""The train state as a plain pytree, and the bridge between it and the NNX model.

state = {"step": int32, "params": {...}, "extra": {...}, "opt_state": optax state}
`params` holds the nnx.Param values as nested dicts; `extra` every other model variable (running
statistics and the like). A plain pytree keeps jit, optax and Orbax free of Flax types; the
graph definition is split off once and reused to rebuild the module inside the step.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxlab import models
from jaxlab.train import mesh as mesh_lib


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """What is static about a model: its graph and the abstract layout of its variables."""
    graphdef: Any
    params_template: Any   # nnx.State of abstract Params (carries the `axes` metadata)
    extra_template: Any    # nnx.State of the other variables

    @classmethod
    def create(cls, model_cfg, seed: int = 0) -> "ModelDef":
        abstract = nnx.eval_shape(lambda: models.build(model_cfg, nnx.Rngs(seed)))
        graphdef, params, extra = nnx.split(abstract, nnx.Param, ...)
        return cls(graphdef, params, extra)

    def merge(self, params: Any, extra: Any) -> nnx.Module:
        return nnx.merge(self.graphdef, _refill(self.params_template, params),
                         _refill(self.extra_template, extra))

    def param_axes(self) -> Any:
        """Logical axis names per parameter: a tree shaped like `params` with tuple leaves."""
        pure = nnx.to_pure_dict(self.params_template)
        variables = jax.tree.leaves(self.params_template, is_leaf=_is_variable)
        treedef = jax.tree.structure(pure)
        return jax.tree.unflatten(
            treedef, [tuple(v.get_metadata().get("axes") or ()) for v in variables])


def _refill(template: Any, values: Any) -> Any:
    """The template nnx.State with its leaves replaced, in order, by the leaves of `values`."""
    return jax.tree.unflatten(jax.tree.structure(template), jax.tree.leaves(values))


def split_model(model: nnx.Module) -> tuple[Any, Any]:
    _, params, extra = nnx.split(model, nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(extra)


def init_state(model_cfg, tx: optax.GradientTransformation, seed: int) -> dict:
    """A fresh train state; jit it with out_shardings to create it already sharded."""
    params, extra = split_model(models.build(model_cfg, nnx.Rngs(seed)))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "extra": extra,
            "opt_state": tx.init(params)}


def state_shardings(abstract_state: dict, model_def: ModelDef, tx: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, rules, overrides=()) -> dict:
    """NamedShardings for every leaf of the train state.

    Params follow the logical rules; optimizer moments shaped like a param share its sharding;
    anything else (counters, factored statistics that do not fit) is replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    params = mesh_lib.param_shardings(model_def.param_axes(), abstract_state["params"], mesh,
                                      rules, overrides)

    def like_param(leaf, sharding):
        # Factored statistics (adafactor) are param-structured but smaller: replicate those.
        fits = mesh_lib.fits(sharding.spec, leaf.shape, mesh)
        return sharding if fits and len(sharding.spec) == len(leaf.shape) else replicated

    opt = optax.tree_map_params(tx, like_param, abstract_state["opt_state"], params,
                                transform_non_params=lambda _: replicated)
    return {"step": replicated, "params": params,
            "extra": jax.tree.map(lambda _: replicated, abstract_state["extra"]),
            "opt_state": opt}


