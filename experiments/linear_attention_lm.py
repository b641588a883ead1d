"""Linear attention (elu+1, NormAttention, TransNormer, SLA) vs softmax as a language model.

The language-modelling half of the linear-attention comparison (the MQAR half is
linear_attention_mqar): the same small byte-level GPT on pysrc with each attention kind.
TransNormer (Qin et al., “The Devil in Linear Transformer”) replaces the scaling and denominator
of kernel linear attention by a normalisation of the output (NormAttention) and uses block-
diagonal softmax in the early layers; SLAB's SLA is ReLU linear attention with a depthwise
convolution on V. Rows: softmax, elu+1 linear attention with its denominator, NormAttention in
every layer, TransNormer (DiagAttention in the first half, NormAttention after) and SLA;
metrics: validation loss and the tail of the training gradient norms (max / median).
"""
import dataclasses

import numpy as np

from jaxlab.experiments.spec import (FAILS, HOLDS, INCONCLUSIVE, Claim, Experiment, Verdict,
                                     describe, gpt_scales, lower, mean, spread)
from jaxlab.train.metrics import read_jsonl

ROWS = {
    "softmax": {"model.attention": "softmax"},
    "linear": {"model.attention": "linear", "model.linear_feature_map": "elu1"},
    "norm_attention": {"model.attention": "norm_attention"},
    "transnormer": {"model.attention_schedule": "transnormer", "model.diag_block": 16},
    "sla": {"model.attention": "sla"},
}
SLA_TOLERANCE = 0.02   # "comparable performance": within 2% of softmax's validation loss
SCALES = gpt_scales(depth=4, width=64, steps=400, warmup=40, cpu_budget=10, seq_len=64)
# Gradient norms every 10 steps, so that the max/median ratio sees the tail.
SCALES["cpu"] = dataclasses.replace(SCALES["cpu"],
                                    overrides={**SCALES["cpu"].overrides, "log.every": 10})


def measure(run, model, summary):
    rows = read_jsonl(f"{summary['workdir']}/metrics.jsonl")
    norms = np.array([r["grad_norm"] for r in rows if "grad_norm" in r])
    return {"grad_norm_ratio": float(norms.max() / np.median(norms))} if len(norms) else {}


def transnormer_closes_the_gap(results) -> Verdict:
    """TransNormer recovers at least half of the loss that elu+1 linear attention gives up to
    softmax; inconclusive when that loss is within the seeds' spread."""
    soft, lin, tn = (results[r]["valid_loss"] for r in ("softmax", "linear", "transnormer"))
    gap = mean(lin) - mean(soft)
    ours = (f"valid_loss: softmax {describe(soft)}, linear {describe(lin)}, transnormer "
            f"{describe(tn)}")
    if gap <= spread(lin) + spread(soft):
        return Verdict(INCONCLUSIVE, ours + " (linear is not clearly behind softmax)")
    closed = (mean(lin) - mean(tn)) / gap
    return Verdict(HOLDS if closed >= 0.5 else FAILS, ours + f"; {closed:.0%} of the gap closed")


def sla_comparable(results) -> Verdict:
    soft, sla = results["softmax"]["valid_loss"], results["sla"]["valid_loss"]
    excess = mean(sla) / mean(soft) - 1
    return Verdict(HOLDS if excess <= SLA_TOLERANCE else FAILS,
                   f"valid_loss: sla {describe(sla)} vs softmax {describe(soft)} "
                   f"({excess:+.1%}; tolerance {SLA_TOLERANCE:.0%})")


EXPERIMENT = Experiment(
    name="linear_attention_lm",
    title="Linear attention (elu+1, NormAttention, TransNormer, SLA) vs softmax on pysrc",
    paper="Qin et al., The Devil in Linear Transformer, 2022 (arXiv:2210.10340); Guo et al., "
          "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive "
          "Re-parameterized Batch Normalization, 2024 (arXiv:2405.11582)",
    scales=SCALES,
    rows=ROWS,
    metrics=("valid_loss", "grad_norm_ratio"),
    claims=(
        Claim("TransNormer surpasses “existing linear variants by a clear margin”",
              lower("valid_loss", "transnormer", "linear")),
        Claim("NormAttention (a normalisation in place of the scaling and denominator) trains "
              "better than vanilla kernel linear attention",
              lower("valid_loss", "norm_attention", "linear")),
        Claim("TransNormer closes most of the gap between linear attention and softmax (the "
              "catalog's test: at least half)", transnormer_closes_the_gap),
        Claim("SLA is at least as good as plain (elu+1) linear attention",
              lower("valid_loss", "sla", "linear")),
        Claim("SLAB for language models: “comparable performance” to softmax (here: validation "
              "loss within 2%)", sla_comparable),
    ),
    seeds=2,
    measure=measure,
    notes="Differences from the papers: a 4-layer, 64-wide byte-level GPT trained 400 steps at "
          "length 64 on pysrc (TransNormer: 385M–1B LMs and WikiText-103; SLAB: ImageNet and "
          "a 150M LM); TransNormer's DiagAttention uses blocks of 16; the gradient-norm ratio "
          "is max/median of the logged training gradient norms.",
)
