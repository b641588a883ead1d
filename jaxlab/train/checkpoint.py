"""Checkpoints: the only module that imports Orbax.

A CheckpointManager under `<workdir>/checkpoints` saves the train state (and a small JSON of
facts about the run) asynchronously, keeps the latest K, and commits each step atomically (Orbax
writes to a temporary directory and renames it when complete). Restore takes abstract targets
with concrete NamedShardings, so a checkpoint saved on one mesh loads onto any other. A damaged
checkpoint is moved aside to `<workdir>/checkpoints.damaged/` and the previous one is used.
"""
from __future__ import annotations

import pathlib
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from jaxlab.errors import ConfigError
from jaxlab.train.mesh import path_name


class Checkpointer:
    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3, async_save: bool = True,
                 warn: Callable[[str], None] = print):
        self.directory = pathlib.Path(directory).absolute()
        self._warn = warn
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        # Handlers named up front, so a fresh manager can read metadata before any save.
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: dict, meta: dict | None = None) -> bool:
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta or {}))
        return self._manager.save(step, args=args)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[dict, dict]:
        """(state, meta) at `step`, or at the newest readable step, laid out as `abstract_state`
        says: a tree of jax.ShapeDtypeStruct whose shardings name a concrete mesh."""
        steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise ConfigError(f"no checkpoint to restore in {str(self.directory)!r}")
        for candidate in steps:
            try:
                saved = self._saved_layout(candidate)
            except Exception as error:  # noqa: BLE001 - damage shows up as many error types
                self._set_aside(candidate, error)
                continue
            check_compatible(saved, abstract_state, self.directory / str(candidate))
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore())
            try:
                restored = self._manager.restore(candidate, args=args)
            except Exception as error:  # noqa: BLE001
                self._set_aside(candidate, error)
                continue
            return restored["state"], dict(restored["meta"] or {})
        raise ConfigError(f"every checkpoint in {str(self.directory)!r} (steps {steps}) is "
                          f"damaged; they were moved to checkpoints.damaged/")

    def _saved_layout(self, step: int) -> dict[str, tuple]:
        metadata = self._manager.item_metadata(step)["state"]
        tree = getattr(metadata, "tree", metadata)
        flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        return {path_name(path): tuple(leaf.shape) for path, leaf in flat}

    def _set_aside(self, step: int, error: Exception) -> None:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        self._warn(f"warning: checkpoint step {step} in {self.directory} is damaged ({reason}); "
                   f"moved to checkpoints.damaged/ and trying the previous one")
        if jax.process_index() == 0:
            aside = self.directory.parent / f"{self.directory.name}.damaged"
            aside.mkdir(exist_ok=True)
            target = aside / str(step)
            suffix = 0
            while target.exists():
                suffix += 1
                target = aside / f"{step}.{suffix}"
            shutil.move(str(self.directory / str(step)), str(target))
        self._manager.reload()

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def check_compatible(saved: dict[str, tuple], abstract_state: Any, where: pathlib.Path) -> None:
    """A clear error listing the parameter paths whose presence or shape differ."""
    flat = jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    wanted = {path_name(path): tuple(leaf.shape) for path, leaf in flat}
    problems = [f"{p}: saved {saved.get(p, 'absent')} vs model {wanted.get(p, 'absent')}"
                for p in sorted(saved.keys() | wanted.keys(), key=_params_first)
                if saved.get(p) != wanted.get(p)]
    if problems:
        raise ConfigError(f"checkpoint {str(where)!r} does not fit this model/optimizer: "
                          f"{'; '.join(problems[:5])}{'; ...' if len(problems) > 5 else ''} "
                          f"({len(problems)} mismatches)")


def _params_first(path: str) -> tuple[bool, str]:
    return (not path.startswith("params/"), path)


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs with the given (concrete) shardings: a restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
