"""Registries by name: models, layer kinds, datasets, optimizers, schedules, losses.

Each registry knows the module that fills it, imported on first lookup, so
`jaxlab.registry.ATTENTION.get("softmax")` works without importing the layers first.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Iterator

from jaxlab.errors import ConfigError


class Registry:
    def __init__(self, kind: str, populated_by: str):
        self.kind = kind
        self._populated_by = populated_by
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def add(obj: Any) -> Any:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj
        return add

    def _populate(self) -> None:
        importlib.import_module(self._populated_by)

    def get(self, name: str) -> Any:
        self._populate()
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._populate()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._populate()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


MODELS = Registry("model", "jaxlab.models")
ATTENTION = Registry("attention kind", "jaxlab.layers")
FFN = Registry("ffn kind", "jaxlab.layers")
NORM = Registry("norm kind", "jaxlab.layers")
NORM_POSITION = Registry("norm position", "jaxlab.layers")
POSITION = Registry("position encoding", "jaxlab.layers")
BLOCKS = Registry("block kind", "jaxlab.layers")
DATASETS = Registry("dataset", "jaxlab.data")
OPTIMIZERS = Registry("optimizer", "jaxlab.train.optim")
SCHEDULES = Registry("schedule", "jaxlab.train.optim")
LOSSES = Registry("loss", "jaxlab.train.losses")
