"""table.md, results.json and plots for one reproduction run."""
from __future__ import annotations

import datetime
import json
import pathlib
import platform

import jax

from jaxlab.experiments.spec import Experiment, Results, Verdict, describe, mean, spread


def write_report(experiment: Experiment, scale: str, results: Results,
                 verdicts: list[tuple[str, Verdict]], out_dir: pathlib.Path, command: str,
                 runtime: dict | None = None) -> list:
    """`runtime`: {"wall_minutes", "reused_rows"} of the run, recorded when given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "table.md", out_dir / "results.json"]
    written[0].write_text(render_table(experiment, scale, results, verdicts, command, runtime))
    written[1].write_text(json.dumps({
        "experiment": experiment.name, "scale": scale, "command": command, "date": _today(),
        "versions": _versions(), **({"runtime": runtime} if runtime else {}), "results": results,
        "claims": [{"quote": q, "verdict": v.status, "ours": v.ours} for q, v in verdicts],
    }, indent=2))
    written += plot_metrics(experiment, results, out_dir)
    if experiment.plots is not None:
        written += list(experiment.plots(results, out_dir))
    return written


def render_table(experiment: Experiment, scale: str, results: Results,
                 verdicts: list[tuple[str, Verdict]], command: str,
                 runtime: dict | None = None) -> str:
    seeds = max(len(v) for row in results.values() for v in row.values())
    lines = [f"# {experiment.title}", "", f"Paper: {experiment.paper}", "",
             f"Command: `{command}`  ", f"Date: {_today()}; {_versions()}  "]
    if runtime:
        reused = (f" ({runtime['reused_rows']} row runs reused from an earlier run)"
                  if runtime.get("reused_rows") else "")
        lines.append(f"Wall time: {runtime['wall_minutes']:.1f} min{reused}  ")
    lines += [f"Scale: {scale}, {seeds} seed(s); values are mean ± standard deviation over "
              "seeds.", ""]
    if experiment.notes:
        lines += [experiment.notes, ""]
    lines += ["| row | " + " | ".join(experiment.metrics) + " |",
              "|---|" + "---|" * len(experiment.metrics)]
    for row, metrics in results.items():
        lines.append(f"| {row} | " + " | ".join(describe(metrics[m]) if m in metrics else "–"
                                               for m in experiment.metrics) + " |")
    if verdicts:
        lines += ["", "| paper's claim | ours | verdict |", "|---|---|---|"]
        lines += [f"| {quote} | {v.ours} | **{v.status}** |" for quote, v in verdicts]
        lines += ["", "Verdicts are computed by the claims' checks in "
                      f"`experiments/{experiment.name}.py` from the numbers above."]
    return "\n".join(lines) + "\n"


def plot_metrics(experiment: Experiment, results: Results, out_dir: pathlib.Path) -> list:
    """One bar chart of the headline metric per row, with the seeds' spread."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = experiment.metrics[0]
    rows = [r for r in results if metric in results[r]]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(rows) + 2), 3.2))
    ax.bar(rows, [mean(results[r][metric]) for r in rows],
           yerr=[spread(results[r][metric]) for r in rows], capsize=3, color="#4c72b0")
    ax.set_ylabel(metric)
    ax.set_title(experiment.title, fontsize=9)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    path = out_dir / f"{metric}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _today() -> str:
    return datetime.date.today().isoformat()


def _versions() -> str:
    import flax
    return (f"jax {jax.__version__}, flax {flax.__version__}, python {platform.python_version()}, "
            f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
