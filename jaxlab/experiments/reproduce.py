"""`jaxlab reproduce NAME`: run an experiment's rows, judge its claims, write the report."""
from __future__ import annotations

import json
import pathlib
import shutil
import time
from typing import Callable, Sequence

from jaxlab.experiments import registry
from jaxlab.experiments.report import write_report
from jaxlab.experiments.runner import run_experiment
from jaxlab.experiments.spec import Verdict

PUBLISHED = registry.EXPERIMENTS_DIR / "results"


def reproduce(name: str, *, scale: str = "cpu", seeds: int | None = None,
              rows: Sequence[str] | None = None, out: str | pathlib.Path = "runs/reproductions",
              publish: bool = False, emit: Callable[[str], None] = print) -> dict:
    """Runs (or reuses) every row, writes table.md, results.json and plots under
    out/NAME/SCALE, and returns {"results", "verdicts", "out_dir", "files"}."""
    experiment = registry.get(name)
    seeds = experiment.seeds if seeds is None else seeds
    out_dir = pathlib.Path(out) / experiment.name / scale
    progress: list[str] = []

    def emit_progress(line: str) -> None:
        progress.append(line)
        emit(line)

    start = time.perf_counter()
    results = run_experiment(experiment, scale=scale, seeds=seeds, rows=rows, out_dir=out_dir,
                             emit=emit_progress)
    runtime = {"wall_minutes": (time.perf_counter() - start) / 60,
               "reused_rows": sum("(reused)" in line for line in progress)}
    covered = [c for c in experiment.claims if _rows_present(c, results)]
    verdicts: list[tuple[str, Verdict]] = [(c.quote, c.check(results)) for c in covered]
    command = (f"jaxlab reproduce {name} --scale {scale} --seeds {seeds}"
               + (f" --rows {','.join(rows)}" if rows else ""))
    files = write_report(experiment, scale, results, verdicts, out_dir, command, runtime)
    if publish:
        target = PUBLISHED / experiment.name
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copy(path, target / pathlib.Path(path).name)
        write_index()
    emit(f"\n{experiment.title} ({scale}, {seeds} seed(s)): {out_dir / 'table.md'}")
    for quote, verdict in verdicts:
        emit(f"  {verdict.status:13s} {quote[:70]}  [{verdict.ours}]")
    skipped = len(experiment.claims) - len(covered)
    if skipped:
        emit(f"  ({skipped} claim(s) not judged: their rows were not run)")
    return {"results": results, "verdicts": verdicts, "out_dir": out_dir, "files": files}


def _rows_present(claim, results) -> bool:
    """A claim is judged only when the rows it compares were run."""
    try:
        claim.check(results)
    except KeyError:
        return False
    return True


def list_experiments() -> list[tuple[str, str, dict]]:
    return [(e.name, e.title, {s: v.budget_minutes for s, v in e.scales.items()})
            for e in registry.all_experiments().values()]


def write_index() -> pathlib.Path:
    """experiments/README.md: every experiment with its command, budget and last published
    verdicts (read from experiments/results/NAME/results.json)."""
    lines = ["# Reproductions", "",
             "Each experiment is a module here; `jaxlab reproduce NAME` runs it and "
             "`--publish` copies its table and plots to `results/NAME/`. Verdicts below come "
             "from the last published run. This file is written by `jaxlab reproduce --publish`.",
             "", "| experiment | command | cpu budget | last published run | "
                 "last published verdicts |", "|---|---|---|---|---|"]
    for experiment in registry.all_experiments().values():
        published = PUBLISHED / experiment.name / "results.json"
        verdicts, runtime = "not run yet", "-"
        if published.exists():
            saved = json.loads(published.read_text())
            runtime = _runtime(saved)
            counts = {}
            for claim in saved["claims"]:
                counts[claim["verdict"]] = counts.get(claim["verdict"], 0) + 1
            verdicts = (", ".join(f"{n} {status}" for status, n in counts.items())
                        + f" ({saved['date']}, [table](results/{experiment.name}/table.md))")
        budget = experiment.scales["cpu"].budget_minutes if "cpu" in experiment.scales else "-"
        lines.append(f"| {experiment.title} | `jaxlab reproduce {experiment.name}` | "
                     f"{budget} min | {runtime} | {verdicts} |")
    path = registry.EXPERIMENTS_DIR / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _runtime(saved: dict) -> str:
    """`scale, N min` of a published run (runs published before the wall time was recorded
    show only their scale)."""
    runtime = saved.get("runtime")
    if not runtime:
        return saved.get("scale", "-")
    reused = f", {runtime['reused_rows']} row runs reused" if runtime.get("reused_rows") else ""
    return f"{saved.get('scale', '-')}, {runtime['wall_minutes']:.1f} min wall{reused}"
