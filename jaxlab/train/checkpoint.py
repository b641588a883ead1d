"""Checkpoints: the only module that imports Orbax.

A CheckpointManager under `<workdir>/checkpoints` saves the train state (and a small JSON of
facts about the run) asynchronously, keeps the latest K, and commits each step atomically (Orbax
writes to a temporary directory and renames it when complete). Restore takes abstract targets
with concrete NamedShardings, so a checkpoint saved on one mesh loads onto any other.
"""
from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlab.errors import ConfigError


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: dict, meta: dict | None = None) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta or {}))
        return self._manager.save(step, args=args)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[dict, dict]:
        """(state, meta) at `step` (default latest), laid out as `abstract_state` says: a tree of
        jax.ShapeDtypeStruct whose shardings name a concrete mesh."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ConfigError(f"no checkpoint to restore in {str(self.directory)!r}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  meta=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(step, args=args)
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(
                f"checkpoint {str(self.directory / str(step))!r} does not match this config's "
                f"model/optimizer ({str(error).splitlines()[0][:200]})") from None
        return restored["state"], dict(restored["meta"] or {})

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with the given (concrete) shardings: a restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
