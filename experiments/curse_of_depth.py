"""The Curse of Depth in Large Language Models (Sun et al., 2025): LayerNorm Scaling.

Pre-LN's residual stream variance grows with depth, so deep blocks barely change their input
("ineffective" layers). LayerNorm Scaling multiplies each block's norm output by 1/√ℓ. Rows:
Pre-LN vs Pre-LN + LayerNorm Scaling on a deeper, narrow byte-level GPT; after training we
measure, on a validation batch, how much the loss rises when each layer is skipped, the angular
distance between consecutive hidden states, and the growth of the stream's variance.
"""
import numpy as np

from jaxlab.analysis import depth
from jaxlab.experiments.spec import Claim, Experiment, gpt_scales, higher, lower

ROWS = {
    "pre-ln": {"model.norm": "layernorm", "model.norm_position": "pre"},
    "pre-ln+lns": {"model.norm": "layernorm", "model.norm_position": "pre",
                   "model.layernorm_scaling": True},
}


def measure(run, model, summary):
    report = depth.depth_report(model, run.batch("valid", 0))
    deep = slice(len(report["skip_loss_change"]) // 2, None)
    return {
        "deep_layer_impact": float(np.mean(report["skip_loss_change"][deep])),
        "deep_angular_distance": float(np.mean(report["angular_distance"][deep])),
        "variance_growth": float(report["variance"][-1] / report["variance"][0]),
    }


EXPERIMENT = Experiment(
    name="curse_of_depth",
    title="The Curse of Depth: Pre-LN vs LayerNorm Scaling",
    paper="Sun et al., The Curse of Depth in Large Language Models, 2025 (arXiv:2502.05795)",
    scales=gpt_scales(depth=12, width=64, steps=600, warmup=50, cpu_budget=15),
    rows=ROWS,
    metrics=("valid_loss", "deep_layer_impact", "deep_angular_distance", "variance_growth"),
    claims=(
        Claim("LayerNorm Scaling improves pre-training (the paper: lower perplexity at every "
              "size it tried)", lower("valid_loss", "pre-ln+lns", "pre-ln")),
        Claim("Pre-LN output variance “exponentially grows with the model depth”; LNS “scales "
              "the variance of output of the layer normalization inversely by the square root "
              "of its depth”", lower("variance_growth", "pre-ln+lns", "pre-ln")),
        Claim("in Pre-LN the deeper layers are less effective: skipping one of them costs less "
              "than with LNS", higher("deep_layer_impact", "pre-ln+lns", "pre-ln")),
    ),
    seeds=2,
    measure=measure,
    notes="Differences from the paper: a 12-layer, 64-wide byte-level GPT for 600 steps on pysrc "
          "(the paper: LLaMA 130M–1B on C4); the deep half is layers 7–12; LNS multiplies the "
          "norm output by 1/√ℓ as the paper's code does.",
)
