"""Config files: `path.py[:arg]` with `get_config(arg)`, typed arg strings and dotted overrides.

A config file defines `get_config(arg: str | None) -> ml_collections.ConfigDict`. Its `arg` is a
typed string such as `depth=12,runlocal`, parsed by `parse_arg` against defaults whose types it
keeps. Overrides (`--config.model.depth=4` on the command line, or `overrides={"model.depth": 4}`
here) must name an existing key and keep its type.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
from typing import Any, Mapping

import ml_collections

from jaxlab.errors import ConfigError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"
DEFAULT_CONFIG = "configs/lm/gpt.py"


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses `key=value,flag` against `defaults`; each value takes the type of its default.

    A bare `flag` means `flag=True`. Keys not in `defaults` are rejected with the valid keys.
    """
    parsed = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, has_value, raw = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"unknown config arg {key!r}; valid args: {', '.join(sorted(defaults)) or 'none'}")
        value = coerce(f"arg {key}", defaults[key], raw.strip() if has_value else True)
        parsed[key] = value
    return parsed


def coerce(name: str, current: Any, value: Any) -> Any:
    """Returns `value` converted to the type of `current`, or raises a ConfigError naming both."""
    if isinstance(value, str) and not isinstance(current, str):
        value = _literal(value)
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(current, str):
        if isinstance(value, str):
            return value
    elif isinstance(current, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return type(current)(value)
    elif current is None:
        return value
    else:
        raise ConfigError(f"{name} cannot be overridden (it holds a {type(current).__name__})")
    raise ConfigError(
        f"{name}={value!r} has the wrong type: expected {type(current).__name__} "
        f"like {current!r}")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Sets dotted keys (`model.depth`) in place; unknown keys list the valid ones."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node, path = config, []
        for part in parents:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                _unknown(dotted, node, path)
            node = node[part]
            path.append(part)
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            _unknown(dotted, node, path)
        current = node[leaf]
        if isinstance(current, ml_collections.ConfigDict):
            raise ConfigError(
                f"config key {dotted!r} is a group; set one of: "
                f"{', '.join(f'{dotted}.{k}' for k in sorted(current))}")
        with node.unlocked():
            node[leaf] = coerce(f"config key {dotted}", current, value)
    return config


def _unknown(dotted: str, node: Any, path: list[str]) -> None:
    where = ".".join(path) or "the top level"
    valid = sorted(node) if isinstance(node, ml_collections.ConfigDict) else []
    raise ConfigError(f"unknown config key {dotted!r}; valid keys at {where}: {', '.join(valid)}")


def resolve_path(path: str) -> pathlib.Path:
    """A config path as given, else relative to the repository root."""
    for candidate in (pathlib.Path(path), REPO_ROOT / path):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file {path!r} not found; see `jaxlab list` for the known configs")


def load_module(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"jaxlab_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} defines no get_config(arg)")
    return module


def load(spec: str = DEFAULT_CONFIG, overrides: Mapping[str, Any] | None = None
         ) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]`, applies dotted `overrides` and returns the resolved ConfigDict."""
    path, _, arg = spec.partition(":")
    module = load_module(resolve_path(path))
    config = module.get_config(arg or None)
    apply_overrides(config, overrides or {})
    config.lock()
    return config


def list_configs() -> list[tuple[str, str]]:
    """(relative path, first docstring line) of every config file under configs/."""
    rows = []
    for path in sorted(CONFIGS_DIR.rglob("*.py")):
        if path.name.startswith("_") or path.name == "common.py":
            continue
        doc = (load_module(path).__doc__ or "").strip().splitlines()
        rows.append((os.path.relpath(path, REPO_ROOT), doc[0] if doc else ""))
    return rows


def to_dict(config: ml_collections.ConfigDict) -> dict:
    return config.to_dict()
