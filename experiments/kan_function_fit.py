"""KAN vs MLP at (about) equal parameter counts on the function-fitting toys.

The KAN papers (Liu et al.'s KAN; S-KAN, whose protocol this follows) fit smooth low-dimensional
functions with B-spline KANs and compare them with MLPs of the same parameter budget. Rows: a
[d, 5, 1] B-spline KAN (grid 10, order 3) and a two-hidden-layer SiLU MLP sized to about the same
number of parameters, on exp(sin(πx)+y²), J0(20x) and x·y with 1000 training points each;
metric: validation mean squared error (and the parameter counts, measured).
"""
import jax
from flax import nnx

from jaxlab.experiments.spec import Claim, Experiment, Scale, lower

FUNCTIONS = {  # name: (KAN widths, MLP widths of about the same parameter count)
    "exp_sin_sq": ([2, 5, 1], [2, 13, 13, 1]),
    "bessel": ([1, 5, 1], [1, 10, 10, 1]),
    "product": ([2, 5, 1], [2, 13, 13, 1]),
}
ROWS = {}
for function, (kan_widths, mlp_widths) in FUNCTIONS.items():
    ROWS[f"kan-{function}"] = {"data.function": function, "model.widths": kan_widths}
    ROWS[f"mlp-{function}"] = {"data.function": function, "model.widths": mlp_widths,
                               "model.name": "mlp"}


def measure(run, model, summary):
    return {"params": sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))}


EXPERIMENT = Experiment(
    name="kan_function_fit",
    title="KAN vs MLP at equal parameters on function fitting",
    paper="Liu et al., KAN: Kolmogorov-Arnold Networks, 2024 (arXiv:2404.19756); Yang et al., "
          "Activation Space Selectable Kolmogorov-Arnold Networks, 2024 (arXiv:2408.08338)",
    scales={
        "smoke": Scale("configs/kan/fit.py:runlocal", {"train.steps": 2}, budget_minutes=1),
        "cpu": Scale("configs/kan/fit.py:steps=1500", {"train.eval_every": 1500},
                     budget_minutes=8),
        "full": Scale("configs/kan/fit.py:steps=20000,grid=20", {"train.eval_every": 5000},
                      budget_minutes=60),
    },
    rows=ROWS,
    metrics=("valid_loss", "params"),
    claims=tuple(
        Claim(f"KANs fit smooth functions better than MLPs with the same level of parameters "
              f"(S-KAN: KAN-style networks “significantly surpass MLP methods with the same "
              f"level of parameters” on function fitting): {function}",
              lower("valid_loss", f"kan-{function}", f"mlp-{function}"))
        for function in FUNCTIONS),
    seeds=2,
    measure=measure,
    notes="Differences from the papers: one KAN shape per function, fixed grid (no grid "
          "extension or pruning during training), Adam with a cosine schedule for 1500 steps "
          "(pykan uses LBFGS), SiLU MLPs with two hidden layers matched to within 10% of the "
          "KAN's parameter count (the params column).",
)
