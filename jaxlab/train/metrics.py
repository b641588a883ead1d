"""Metric writers: metrics.jsonl always, stdout lines, TensorBoard events when tensorboardX is installed."""
from __future__ import annotations

import json
import pathlib
from typing import Callable, Mapping


class JsonlWriter:
    """One JSON object per logged step, appended, so a resumed run extends the same file."""

    def __init__(self, path: pathlib.Path):
        self._file = open(path, "a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self._file.write(json.dumps({"step": step, **scalars}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TextWriter:
    def __init__(self, emit: Callable[[str], None]):
        self._emit = emit

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        self._emit(f"step {step}: " + "  ".join(f"{k}={format_value(v)}" for k, v in scalars.items()))

    def close(self) -> None:
        pass


class TensorBoardWriter:
    def __init__(self, logdir: pathlib.Path):
        from tensorboardX import SummaryWriter  # optional extra [tb]
        self._writer = SummaryWriter(str(logdir))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def format_value(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def tensorboard_available() -> bool:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


class MetricWriters:
    """Fans one call out to every writer."""

    def __init__(self, writers):
        self._writers = list(writers)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        for writer in self._writers:
            writer.write(step, scalars)

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def drop_rows_after(path: pathlib.Path, step: int) -> int:
    """Removes rows with a step past `step` (atomically); returns how many were dropped.

    On resume from a checkpoint at `step`, rows logged after it describe steps that will be
    run again (identically), so keeping them would repeat steps in the file.
    """
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and _step_of(line) <= step]
    if len(kept) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return len(lines) - len(kept)


def _step_of(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except ValueError:  # a line cut short by a kill: drop it with the rest
        return float("inf")
