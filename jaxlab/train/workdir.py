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

# Differences that never count as a config change: how to log, and the permission itself.
IGNORED_CHANGES = ("log.", "ckpt.allow_config_change")


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


def config_changes(workdir: pathlib.Path, config: dict) -> list[str] | None:
    """None for a new workdir; else the `key: old -> new` differences from its config.json."""
    path = workdir / "config.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{str(path)!r} is not valid JSON; point --workdir at a new directory") from None
    old, new = flatten(saved), flatten(as_json(config))
    # A key the saved run did not have yet was added to the code later with a default that
    # keeps the old behaviour, so it is not a change of this run.
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
            if k in old and old.get(k) != new.get(k) and not k.startswith(IGNORED_CHANGES)]


def check_config(workdir: pathlib.Path, config: dict, allow_change: bool) -> list[str] | None:
    """Refuses to resume `workdir` with a different config unless `allow_change`."""
    changes = config_changes(workdir, config)
    if changes and not allow_change:
        raise ConfigError(
            f"workdir {str(workdir)!r} holds a run with a different config ({', '.join(changes[:4])}"
            f"{', ...' if len(changes) > 4 else ''}); use a new --workdir, the same config, or "
            f"--config.ckpt.allow_config_change=True")
    return changes


def write_config(workdir: pathlib.Path, config: dict, resumed_at: int | None) -> pathlib.Path:
    """config.json for a new run; a changed config on resume goes to config.resume-<step>.json
    so the history stays readable and config.json is never overwritten."""
    name = "config.json" if resumed_at is None else f"config.resume-{resumed_at}.json"
    path = workdir / name
    path.write_text(json.dumps(as_json(config), indent=2, sort_keys=True) + "\n")
    return path


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
