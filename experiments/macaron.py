"""Understanding and Improving Transformer From a Multi-Particle Dynamic System Point of View
(Lu et al., 2019): the Macaron Net.

A Transformer layer read as one Lie–Trotter splitting step of a convection–diffusion ODE
(attention = interaction, FFN = per-particle convection); the Strang–Marchuk splitting gives the
Macaron layer ½FFN → attention → ½FFN (jaxlab/layers/macaron.py). The paper reports Macaron
beating the Transformer at equal parameters on translation and BERT pre-training. Here: a
byte-level Pre-LN GPT on pysrc, the standard block vs the Macaron block with each of its two
FFNs at half width (equal depth, equal parameter count up to one norm per layer).
"""
import jax
from flax import nnx

from jaxlab.experiments.spec import Claim, Experiment, gpt_scales, lower

ROWS = {"standard": {"model.block": "standard"},
        "macaron": {"model.block": "macaron", "model.macaron_half_width": True}}


def measure(run, model, summary):
    params = nnx.state(model, nnx.Param)
    return {"params_k": sum(p.size for p in jax.tree.leaves(params)) / 1e3}


EXPERIMENT = Experiment(
    name="macaron",
    title="Macaron (½FFN–attention–½FFN) vs the standard Transformer block at equal parameters",
    paper="Lu et al., Understanding and Improving Transformer From a Multi-Particle Dynamic "
          "System Point of View, 2019 (arXiv:1906.02762)",
    scales=gpt_scales(depth=4, width=64, steps=300, cpu_budget=8,
                      full="depth=12,width=512,heads=8,seq_len=256,steps=20000,batch=128",
                      full_budget=600),
    rows=ROWS,
    metrics=("valid_loss", "train_loss", "params_k"),
    claims=(
        Claim("“the Macaron Net is superior to the Transformer” (here: lower validation loss of "
              "a byte-level LM at equal depth and parameters)",
              lower("valid_loss", "macaron", "standard")),
        Claim("… and it fits the training data better (lower final training loss)",
              lower("train_loss", "macaron", "standard")),
    ),
    seeds=3,
    measure=measure,
    notes="Differences from the paper: a 4-layer, 64-wide byte-level Pre-LN GPT (RMSNorm, GLU "
          "FFN, RoPE) for 300 steps on pysrc instead of post-LN encoder–decoders on WMT and "
          "BERT pre-training; the Macaron block's two FFNs are half as wide so the parameter "
          "counts match (params_k, thousands; Macaron has one more norm per layer); no "
          "synthetic seq2seq task; 3 seeds, judged against their spread.",
)
