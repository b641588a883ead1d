"""The run's directory: config.json (resolved config), env.json (versions, devices, git sha)."""
from __future__ import annotations

import json
import pathlib
import platform
import subprocess
import sys
from typing import Any

import jax

from jaxlab.errors import ConfigError

# Keys that may change when a workdir is resumed: how long to train and how to log or save.
RESUMABLE_CHANGES = ("train.steps", "train.eval_every", "train.eval_steps", "log.", "ckpt.")


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def check_or_write_config(workdir: pathlib.Path, config: dict) -> bool:
    """Writes config.json in a new workdir; in an existing one checks the config still matches.

    Returns True when the workdir already held a run.
    """
    path = workdir / "config.json"
    config = as_json(config)
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return False
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{str(path)!r} is not valid JSON; point --workdir at a new directory") from None
    old, new = flatten(saved), flatten(config)
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
        raise ConfigError(f"workdir {str(workdir)!r} holds a run with a different config ({shown}); "
                          f"use a new --workdir or the same config")
    return True


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=pathlib.Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(dataset_facts: dict) -> dict:
    import flax
    import optax
    import orbax.checkpoint as ocp
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
        "orbax_checkpoint": getattr(ocp, "__version__", None),
        "backend": jax.default_backend(), "process_count": jax.process_count(),
        "devices": [str(d) for d in jax.devices()], "git_sha": git_sha(),
        "dataset": dataset_facts,
    }


def write_env(workdir: pathlib.Path, env: dict) -> None:
    """env.json of the first start; a resume adds env.<step>.json instead of overwriting it."""
    path = workdir / "env.json"
    if path.exists():
        path = workdir / f"env.resume-{env.get('resumed_at_step', 0)}.json"
    path.write_text(json.dumps(as_json(env), indent=2) + "\n")
