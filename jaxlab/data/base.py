"""The Dataset contract the trainer relies on, plus config-field helpers.

Every batch is a pure function of (seed, split, step, dataset config) and the
process's place in the job. The random generator is seeded WITHOUT the process
index: every process draws the same plan for the whole global batch and keeps
only its own rows. So the per-process shares concatenate to exactly the batch a
single process would get, and resuming with a different process count sees the
same data.
"""
from __future__ import annotations

import abc
from typing import Any

import numpy as np

from jaxlab.errors import ConfigError

SPLITS = ("train", "valid")

ExampleSpec = dict[str, tuple[tuple[int, ...], np.dtype]]


class Dataset(abc.ABC):
    name: str
    task: str  # "lm" or "classification"
    vocab_size: int = 0
    num_classes: int = 0
    bytes_per_token: float | None = None

    @abc.abstractmethod
    def example_spec(self) -> ExampleSpec:
        """Per-example shape and dtype of each batch entry."""

    @abc.abstractmethod
    def _make_rows(self, split: str, rng: np.random.Generator,
                   batch_size: int, rows: slice) -> dict[str, np.ndarray]:
        """Draw the plan for all `batch_size` examples from `rng`, build only `rows`.

        Drawing the whole plan on every process is what keeps the shares
        consistent with each other (see the module docstring).
        """

    @abc.abstractmethod
    def source_facts(self) -> dict[str, Any]:
        """JSON-serialisable facts about where the data came from."""

    def batch(self, split: str, step: int, batch_size: int, *, seed: int,
              process_index: int = 0, process_count: int = 1) -> dict[str, np.ndarray]:
        split_id = split_index(split)
        rows = process_rows(batch_size, process_index, process_count)
        rng = np.random.default_rng([non_negative("seed", seed), split_id,
                                     non_negative("step", step)])
        out = self._make_rows(split, rng, batch_size, rows)
        _check_against_spec(out, self.example_spec(), rows.stop - rows.start)
        return out

    def describe(self) -> dict[str, Any]:
        spec = {key: [list(shape), np.dtype(dtype).name]
                for key, (shape, dtype) in self.example_spec().items()}
        return {"name": self.name, "task": self.task, "vocab_size": self.vocab_size,
                "num_classes": self.num_classes, "bytes_per_token": self.bytes_per_token,
                "example_spec": spec, **self.source_facts()}


class SampledArrays(Dataset):
    """A dataset held as `self.splits[split] = (inputs, targets)` arrays; a batch draws its
    examples with replacement by the batch rng (every weight 1)."""
    splits: dict[str, tuple[np.ndarray, np.ndarray]]

    def _make_rows(self, split, rng, batch_size, rows):
        inputs, targets = self.splits[split]
        picks = rng.integers(0, len(targets), size=batch_size)[rows]
        return {"inputs": inputs[picks], "targets": targets[picks],
                "weights": np.ones(len(picks), np.float32)}


def split_index(split: str) -> int:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}.")
    return SPLITS.index(split)


def non_negative(what: str, value: Any) -> int:
    # SeedSequence rejects negatives with a bare ValueError; say which argument.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{what} must be a non-negative integer, got {value!r}.")
    return int(value)


def process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
    """The rows of the global batch that belong to this process."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ConfigError(f"process_index {process_index} is not in range for "
                          f"process_count {process_count}; it must be in 0..{process_count - 1}.")
    if batch_size % process_count:
        raise ConfigError(f"batch_size {batch_size} is not divisible by process_count "
                          f"{process_count}; use a multiple of {process_count}.")
    share = batch_size // process_count
    return slice(process_index * share, (process_index + 1) * share)


def lm_spec(seq_len: int) -> ExampleSpec:
    return {"inputs": ((seq_len,), np.dtype(np.int32)),
            "targets": ((seq_len,), np.dtype(np.int32)),
            "weights": ((seq_len,), np.dtype(np.float32))}


def int_field(cfg: Any, name: str, default: int, *, minimum: int = 1) -> int:
    value = cfg.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"data.{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def fraction_field(cfg: Any, name: str, default: float) -> float:
    value = cfg.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"data.{name} must be a number strictly between 0 and 1, "
                          f"got {value!r}.")
    return float(value)


def _check_against_spec(out: dict[str, np.ndarray], spec: ExampleSpec, rows: int) -> None:
    # Cheap per step, and a mismatch here would otherwise surface as an
    # obscure shape error deep inside a jitted train step.
    assert set(out) == set(spec), (sorted(out), sorted(spec))
    for key, (shape, dtype) in spec.items():
        assert out[key].shape == (rows, *shape) and out[key].dtype == dtype, \
            (key, out[key].shape, out[key].dtype, shape, dtype)
