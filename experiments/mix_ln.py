"""Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and Post-LN (Li et al., 2024).

"Mix-LN applies Post-LN to the earlier layers and Pre-LN to the deeper layers": the first ⌊αL⌋
blocks are Post-LN. α = 0 is Pre-LN and α = 1 Post-LN. The paper argues that Pre-LN starves the
deep layers of gradient and Post-LN the early ones, so the mix spreads the gradient more evenly
and lowers the loss. Rows: α ∈ {0, 0.25, 0.5, 1}; after training we measure, on a validation
batch, each block's gradient norm and their spread (standard deviation / mean).
"""
import numpy as np

from jaxlab.analysis import depth
from jaxlab.experiments.spec import Claim, Experiment, gpt_scales, lower

ALPHAS = (0.0, 0.25, 0.5, 1.0)
ROWS = {f"alpha={alpha:g}": {"model.norm": "layernorm", "model.norm_position": "mix",
                             "model.mix_alpha": alpha} for alpha in ALPHAS}


def measure(run, model, summary):
    norms = depth.layer_gradient_norms(model, run.batch("valid", 0))
    return {"grad_norm_spread": float(np.std(norms) / np.mean(norms)),
            "first_to_last_grad_ratio": float(norms[0] / norms[-1])}


EXPERIMENT = Experiment(
    name="mix_ln",
    title="Mix-LN: Post-LN in the first ⌊αL⌋ layers, Pre-LN after",
    paper="Li et al., Mix-LN: Unleashing the Power of Deeper Layers by Combining Pre-LN and "
          "Post-LN, 2024 (arXiv:2412.13795)",
    scales=gpt_scales(depth=8, width=64, steps=400, cpu_budget=12),
    rows=ROWS,
    metrics=("valid_loss", "grad_norm_spread", "first_to_last_grad_ratio"),
    claims=(
        Claim("Mix-LN (α = 0.25) reaches a lower loss than Pre-LN",
              lower("valid_loss", "alpha=0.25", "alpha=0")),
        Claim("Mix-LN (α = 0.25) reaches a lower loss than Post-LN",
              lower("valid_loss", "alpha=0.25", "alpha=1")),
        Claim("Mix-LN spreads the gradient more evenly across layers than Pre-LN",
              lower("grad_norm_spread", "alpha=0.25", "alpha=0")),
        Claim("... and than Post-LN", lower("grad_norm_spread", "alpha=0.25", "alpha=1")),
    ),
    seeds=2,
    measure=measure,
    notes="Differences from the paper: an 8-layer, 64-wide byte-level GPT for 400 steps on pysrc "
          "(the paper: LLaMA 71M–7B); gradient norms are measured once after training, on one "
          "validation batch, per block (attention and FFN together).",
)
