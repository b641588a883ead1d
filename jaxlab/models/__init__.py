"""Whole models, built by name: `build(config.model, rngs)`."""
from __future__ import annotations

from flax import nnx

from jaxlab.models import transformer, vit  # noqa: F401  (registration)
from jaxlab.models import hopfield_lookup, kan, mil  # noqa: F401  (registration)
from jaxlab.models.decoding import generate  # noqa: F401
from jaxlab.registry import MODELS


def build(model_cfg, rngs: nnx.Rngs) -> nnx.Module:
    """The NNX module named by `model_cfg.name`, with parameters drawn from `rngs`."""
    return MODELS.get(model_cfg.name)(model_cfg, rngs=rngs)
