"""Peri-LN: Revisiting Layer Normalization in the Transformer Architecture (Kim et al., 2025).

Peri-LN normalizes each sublayer's input and output (h + LN(F(LN(h)))) plus the embedding.
The paper compares it with Pre-LN and Post-LN: Pre-LN lets the residual stream's variance and
"massive activations" grow, Post-LN trains poorly, Peri-LN keeps the stream balanced and is more
stable at high learning rates. Rows: the three placements at two learning rates, on a byte-level
GPT; measurements on a validation batch after training.
"""
import numpy as np

from jaxlab.analysis import depth
from jaxlab.experiments.spec import Claim, Experiment, gpt_scales, lower

PLACEMENTS = ("pre", "post", "peri")
LEARNING_RATES = {"lr3e-3": 3e-3, "lr3e-2": 3e-2}
ROWS = {f"{placement}-{name}": {"model.norm": "layernorm", "model.norm_position": placement,
                                "optim.lr": lr}
        for name, lr in LEARNING_RATES.items() for placement in PLACEMENTS}


def measure(run, model, summary):
    states = depth.hidden_states(model, run.batch("valid", 0)["inputs"])
    stats = depth.stream_statistics(states)
    return {"variance_growth": float(stats["variance"][-1] / stats["variance"][0]),
            "max_activation": float(max(np.abs(np.asarray(s)).max() for s in states))}


EXPERIMENT = Experiment(
    name="peri_ln",
    title="Peri-LN vs Pre-LN vs Post-LN",
    paper="Kim et al., Peri-LN: Revisiting Layer Normalization in the Transformer "
          "Architecture, 2025 (arXiv:2502.02732)",
    scales=gpt_scales(depth=6, width=64, steps=400, cpu_budget=12),
    rows=ROWS,
    metrics=("valid_loss", "variance_growth", "max_activation"),
    claims=(
        Claim("Peri-LN trains to a lower loss than Pre-LN", lower("valid_loss", "peri-lr3e-3", "pre-lr3e-3")),
        Claim("Pre-LN is prone to “massive activations”; Peri-LN keeps them small",
              lower("max_activation", "peri-lr3e-3", "pre-lr3e-3")),
        Claim("Peri-LN balances variance growth in the residual stream, unlike Pre-LN",
              lower("variance_growth", "peri-lr3e-3", "pre-lr3e-3")),
        Claim("Peri-LN is more robust to a high learning rate than Pre-LN",
              lower("valid_loss", "peri-lr3e-2", "pre-lr3e-2")),
        Claim("Post-LN trains worse than Peri-LN", lower("valid_loss", "peri-lr3e-3", "post-lr3e-3")),
    ),
    seeds=2,
    measure=measure,
    notes="Differences from the paper: a 6-layer, 64-wide byte-level GPT for 400 steps on pysrc "
          "(the paper: 400M–3.2B models on 30B tokens); LayerNorm everywhere; the hidden states "
          "are the residual stream between blocks, before the final norm.",
)
