"""What an experiment is: rows (config overrides) × seeds at a scale, measurements, claims.

An experiment module in experiments/ defines `EXPERIMENT = Experiment(...)`. Verdicts are
computed from the run by the claims' checks, never written by hand.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Callable, Mapping

# results[row][metric] = one value per seed
Results = Mapping[str, Mapping[str, list[float]]]

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclasses.dataclass(frozen=True)
class Scale:
    config: str                                  # a config spec, e.g. "configs/lm/gpt.py:depth=2"
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    budget_minutes: float = 20.0                 # what the whole experiment should take here
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # for Computed rows


@dataclasses.dataclass(frozen=True)
class Computed:
    """A row measured by a function instead of the trainer (closed-form studies, hand-rolled
    training of models the trainer does not build, timing). `fn(params)` returns
    {metric: value}; params = the scale's `params`, then these, then `seed` (a ConfigDict)."""
    fn: Callable[[Any], Mapping[str, float]]
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def computed(fn: Callable[[Any], Mapping[str, float]], **params: Any) -> Computed:
    return Computed(fn, params)


@dataclasses.dataclass(frozen=True)
class Verdict:
    status: str      # HOLDS, FAILS or INCONCLUSIVE
    ours: str        # the numbers behind it, in words


@dataclasses.dataclass(frozen=True)
class Claim:
    quote: str                                   # the paper's claim, quoted
    check: Callable[[Results], Verdict]


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    paper: str                                   # authors, year, arXiv id
    scales: Mapping[str, Scale]                  # "smoke" (tests), "cpu", "full"
    rows: Mapping[str, Mapping[str, Any] | Computed]  # row name -> dotted config overrides
    # Columns of the table, the first is plotted; a row may lack a metric that does not apply
    # to it (shown as –), but every metric is measured by some row.
    metrics: tuple[str, ...]
    claims: tuple[Claim, ...] = ()
    seeds: int = 2
    # Extra measurements on a trained row: (Run, trained model, summary) -> {metric: value}.
    measure: Callable[[Any, Any, dict], Mapping[str, float]] | None = None
    # Extra figures: (results, output folder) -> list of written paths.
    plots: Callable[[Results, Any], list] | None = None
    notes: str = ""                              # what differs from the paper's setup


def mean(values: list[float]) -> float:
    return statistics.fmean(values)


def spread(values: list[float]) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def describe(values: list[float]) -> str:
    return f"{mean(values):.4g} ± {spread(values):.2g}" if len(values) > 1 else f"{mean(values):.4g}"


def judge_lower(better: list[float], worse: list[float], ours: str,
                margin: float = 0.0) -> Verdict:
    """`better` is lower than `worse` when the gap exceeds `margin` and the seeds' spread; the
    opposite gap the same way means it does not hold; anything in between is inconclusive."""
    gap = mean(worse) - mean(better)
    noise = max(margin, spread(better) + spread(worse))
    if gap > noise:
        return Verdict(HOLDS, ours)
    if gap < -noise:
        return Verdict(FAILS, ours)
    return Verdict(INCONCLUSIVE, ours + " (gap within seed spread)")


def lower(metric: str, better: str, worse: str, *, margin: float = 0.0) -> Callable[[Results], Verdict]:
    """Claim check: row `better` has a lower `metric` than row `worse` (see judge_lower)."""
    def check(results: Results) -> Verdict:
        a, b = results[better][metric], results[worse][metric]
        return judge_lower(a, b, f"{metric}: {better} {describe(a)} vs {worse} {describe(b)}",
                           margin)
    return check


def higher(metric: str, better: str, worse: str, *, margin: float = 0.0) -> Callable[[Results], Verdict]:
    """Claim check: row `better` has a higher `metric` than row `worse` (see `lower`)."""
    return lower(metric, worse, better, margin=margin)


def at_most(metric: str, row: str, bound: float) -> Callable[[Results], Verdict]:
    """Claim check: every seed of `row` has `metric` ≤ bound."""
    def check(results: Results) -> Verdict:
        values = results[row][metric]
        ours = f"{metric} of {row}: {describe(values)} (bound {bound:.3g})"
        return Verdict(HOLDS if max(values) <= bound else FAILS, ours)
    return check


def at_least(metric: str, row: str, bound: float) -> Callable[[Results], Verdict]:
    """Claim check: every seed of `row` has `metric` ≥ bound."""
    def check(results: Results) -> Verdict:
        values = results[row][metric]
        ours = f"{metric} of {row}: {describe(values)} (bound ≥ {bound:.3g})"
        return Verdict(HOLDS if min(values) >= bound else FAILS, ours)
    return check


def gpt_scales(*, depth: int, width: int, steps: int, cpu_budget: float, seq_len: int = 64,
               batch: int = 16, warmup: int | None = None, full: str = "depth=24,width=1024,heads=16,seq_len=512,"
                                            "steps=20000,batch=256",
               full_budget: float = 900) -> dict[str, Scale]:
    """smoke / cpu / full scales of the byte-level GPT (configs/lm/gpt.py) that the
    normalization and stability papers share; cpu runs on one device, 10% warm-up unless
    `warmup` says otherwise."""
    quiet = {"log.sample": False}
    return {
        "smoke": Scale("configs/lm/gpt.py:runlocal", {"train.steps": 2}, budget_minutes=1),
        "cpu": Scale(f"configs/lm/gpt.py:depth={depth},width={width},heads={max(1, width // 16)},"
                     f"seq_len={seq_len},steps={steps},batch={batch}",
                     {**quiet, "optim.warmup_steps": steps // 10 if warmup is None else warmup,
                      "train.eval_every": steps,
                      "train.eval_steps": 8, "mesh": [("data", 1)]}, budget_minutes=cpu_budget),
        "full": Scale(f"configs/lm/gpt.py:{full}",
                      {**quiet, "optim.warmup_steps": 1000, "train.eval_steps": 32},
                      budget_minutes=full_budget),
    }
