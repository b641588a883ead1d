"""Linear attention vs softmax on multi-query associative recall (MQAR), by number of pairs.

MQAR shows n key-value pairs, then asks for the values of the n keys in a random order; recall
needs the model to bind each value to the key before it and look it up later. Softmax attention
can do both exactly; a kernel (linear) attention keeps a fixed-size state φ(k)vᵀ per head, so its
lookups interfere more as n grows. Rows (2-layer Transformers, the same trainer and data):
softmax; linear attention with the elu+1 feature map and its denominator (Katharopoulos et al.);
TransNormer's NormAttention (RMSNorm in place of the denominator) in both layers; the TransNormer
stack (block-diagonal softmax in layer 1, NormAttention in layer 2); and SLAB's simplified
linear attention (ReLU kernel + depthwise convolution of the values). Each model trains at the
scale's number of pairs; after training it is evaluated on fresh MQAR sequences of the same
length with all, half and a quarter of those pairs (accuracy on the answer tokens).
"""
import json
import pathlib

import jax.numpy as jnp
import numpy as np

from jaxlab.data import build_dataset
from jaxlab.experiments.spec import (FAILS, HOLDS, INCONCLUSIVE, Claim, Experiment, Scale,
                                     Verdict, at_least, describe, higher, judge_lower, lower, mean)

ROWS = {
    "softmax": {"model.attention": "softmax"},
    "linear": {"model.attention": "linear", "model.linear_feature_map": "elu1"},
    "norm_attention": {"model.attention": "norm_attention"},
    "transnormer": {"model.attention_schedule": "transnormer", "model.diag_block": 8},
    "sla": {"model.attention": "sla"},
}
FRACTIONS = {"all": 1, "half": 2, "quarter": 4}   # evaluated pairs = trained pairs // divisor
EVAL_BATCHES, EVAL_BATCH_SIZE = 4, 64
SLA_TOLERANCE = 0.05   # "close to softmax": at most 5 accuracy points below it


def recall_accuracy(model, data_cfg, num_pairs: int, seed: int) -> float:
    cfg = data_cfg.copy_and_resolve_references()
    cfg.num_pairs = num_pairs
    dataset = build_dataset(cfg)
    correct = total = 0.0
    for i in range(EVAL_BATCHES):
        batch = dataset.batch("valid", 1000 + i, EVAL_BATCH_SIZE, seed=seed)
        logits = model(jnp.asarray(batch["inputs"]))
        hits = np.asarray(jnp.argmax(logits, -1)) == batch["targets"]
        correct += float(np.sum(hits * batch["weights"]))
        total += float(np.sum(batch["weights"]))
    return correct / total


def grad_norm_ratio(workdir: str, skip_fraction: float = 0.1) -> float:
    """Max over median of the logged gradient norms after the first 10% of steps: how heavy
    the tail of the gradient norm is (TransNormer's 'unbounded gradients')."""
    norms = [row["grad_norm"] for row in map(json.loads, (pathlib.Path(workdir) / "metrics.jsonl")
                                             .read_text().splitlines()) if "grad_norm" in row]
    norms = norms[int(len(norms) * skip_fraction):] or norms
    return float(np.max(norms) / np.median(norms))


def measure(run, model, summary):
    pairs = run.config.data.num_pairs
    out = {f"acc_{name}_pairs": recall_accuracy(model, run.config.data, max(1, pairs // d),
                                                run.config.seed)
           for name, d in FRACTIONS.items()}
    out["grad_norm_ratio"] = grad_norm_ratio(summary["workdir"])
    return out


def gap_to_softmax_widens(row: str):
    """(softmax − row) accuracy at all pairs exceeds the same gap at a quarter of them."""
    def check(results) -> Verdict:
        soft, ours = results["softmax"], results[row]
        soft_all, soft_q = soft["acc_all_pairs"], soft["acc_quarter_pairs"]
        row_all, row_q = ours["acc_all_pairs"], ours["acc_quarter_pairs"]
        gap_all = [s - r for s, r in zip(soft_all, row_all)]
        gap_q = [s - r for s, r in zip(soft_q, row_q)]
        return judge_lower(gap_q, gap_all, f"softmax − {row} accuracy: at a quarter of the pairs "
                                           f"{describe(gap_q)} vs at all pairs {describe(gap_all)}")
    return check


def sla_close_to_softmax(results) -> Verdict:
    gaps = [s - r for s, r in zip(results["softmax"]["acc_all_pairs"],
                                  results["sla"]["acc_all_pairs"])]
    ours = (f"softmax − sla accuracy at all pairs: {describe(gaps)} (tolerance "
            f"{SLA_TOLERANCE:g})")
    return Verdict(HOLDS if mean(gaps) <= SLA_TOLERANCE else FAILS, ours)


SOFTMAX_SOLVES = 0.9


def if_softmax_recalls(check):
    """A comparison of recall between kinds means something only once the softmax reference
    has learned recall; below SOFTMAX_SOLVES every model may be at the guessing level, so the
    comparison is inconclusive whatever its numbers say."""
    def gated(results) -> Verdict:
        verdict = check(results)
        reference = results["softmax"]["acc_all_pairs"]
        if min(reference) >= SOFTMAX_SOLVES:
            return verdict
        return Verdict(INCONCLUSIVE, f"{verdict.ours}; softmax itself recalls only "
                                     f"{describe(reference)} (< {SOFTMAX_SOLVES:g}), so no model "
                                     f"has learned recall at this scale")
    return gated

EXPERIMENT = Experiment(
    name="linear_attention_mqar",
    title="Linear attention (elu+1, NormAttention, TransNormer, SLA) vs softmax on MQAR",
    paper="Katharopoulos et al. 2020 (arXiv:2006.16236), linear attention; Qin et al., The "
          "Devil in Linear Transformer, 2022 (arXiv:2210.10340), TransNormer; Han et al., SLAB, "
          "2024 (arXiv:2405.11582), SLA; task: Arora et al., Zoology, 2023 (arXiv:2312.04927)",
    scales={
        "smoke": Scale("configs/synthetic/mqar.py:runlocal,pairs=4", {"train.steps": 2},
                       budget_minutes=1),
        # Post-LN, 2 heads, no weight decay and batch 128 are what let softmax learn recall in
        # this budget (it solves 8 pairs by step ~200 of 600 on seeds 0-2): with Pre-LN the
        # 0.02-std embeddings are swamped by the O(1) block outputs and softmax stayed at the
        # guessing level (~0.33) after 1000 steps of batch 64 at 1-4 heads, lr 1e-3 to 1e-2;
        # Post-LN at 4 heads, or at batch 64, failed on some seeds.
        "cpu": Scale("configs/synthetic/mqar.py:pairs=8,seq_len=32,vocab=64,depth=2,width=64,"
                     "steps=600",
                     {"train.batch_size": 128, "optim.lr": 3e-3, "optim.warmup_steps": 50,
                      "optim.weight_decay": 0.0, "model.num_heads": 2,
                      "model.norm_position": "post",
                      "train.eval_every": 600, "log.every": 10, "mesh": [("data", 1)]},
                     budget_minutes=6),  # 3.2-3.4 min measured, shared 2-core box (light load)
        "full": Scale("configs/synthetic/mqar.py:pairs=64,seq_len=256,vocab=8192,depth=2,"
                      "width=256,steps=20000",
                      {"train.batch_size": 256, "optim.lr": 1e-3, "optim.warmup_steps": 500,
                       "train.eval_every": 2000, "log.every": 10}, budget_minutes=240),
    },
    rows=ROWS,
    metrics=("acc_all_pairs", "acc_half_pairs", "acc_quarter_pairs", "valid_loss",
             "grad_norm_ratio"),
    claims=(
        Claim("the task's premise (Zoology, paraphrased, not quoted): softmax attention solves "
              f"MQAR — here at least {SOFTMAX_SOLVES:g} accuracy with all pairs",
              at_least("acc_all_pairs", "softmax", SOFTMAX_SOLVES)),
        Claim("a fixed-size linear-attention state recalls worse as the number of pairs grows "
              "(Zoology / Based, paraphrased, not quoted): the elu+1 model's gap to softmax is "
              "larger at all pairs than at a quarter of them",
              if_softmax_recalls(gap_to_softmax_widens("linear"))),
        Claim("TransNormer: “the scaling of attention matrices is the devil in unbounded "
              "gradients” — NormAttention (a normalization in place of the scaling) has a "
              "lighter-tailed gradient norm (max / median) than elu+1 linear attention",
              lower("grad_norm_ratio", "norm_attention", "linear")),
        Claim("NormAttention beats vanilla kernel linear attention (the catalog's criterion for "
              "TransNormer's “replaces the scaling operation with a normalization”): higher "
              "recall accuracy at all pairs",
              if_softmax_recalls(higher("acc_all_pairs", "norm_attention", "linear"))),
        Claim("“transNormer surpasses ... existing linear variants by a clear margin”: the "
              "TransNormer stack recalls better than elu+1 linear attention",
              if_softmax_recalls(higher("acc_all_pairs", "transnormer", "linear"))),
        Claim("“transNormer surpasses vanilla transformer ... by a clear margin”: the "
              "TransNormer stack recalls better than softmax",
              if_softmax_recalls(higher("acc_all_pairs", "transnormer", "softmax"))),
        Claim("SLAB's SLA gives “comparable performance” (the catalog: SLA ≥ plain linear "
              "attention): SLA recalls better than elu+1 linear attention",
              if_softmax_recalls(higher("acc_all_pairs", "sla", "linear"))),
        Claim(f"SLAB's SLA gives “comparable performance” to softmax: at most "
              f"{SLA_TOLERANCE * 100:g} accuracy points below it at all pairs",
              if_softmax_recalls(sla_close_to_softmax)),
    ),
    seeds=2,
    measure=measure,
    notes="Differences from the papers: MQAR (Zoology's synthetic recall task) stands in for "
          "the papers' language modelling and ImageNet benchmarks, with 2-layer, 64-wide "
          "models (2 heads of 32, Post-LN, no weight decay) trained 600 steps of batch 128 at "
          "8 pairs in 32 tokens with a 64-token vocabulary at cpu scale (Zoology: many more "
          "steps, vocabulary 8192, models trained at each number of pairs). Post-LN (every "
          "row) is this scale's choice, not the papers': with Pre-LN this repo's small "
          "(0.02-std) embeddings are swamped by the blocks' outputs, and the softmax model "
          "was still at the guessing level after 1000 steps of batch 64 (1, 2 or 4 heads, lr "
          "1e-3 to 1e-2). Fewer pairs are evaluated with the model trained at the "
          "most pairs, so their layout (queries start earlier) is unseen in training and may "
          "not transfer. Recall-free guessing is strong: an answer is one of the n values "
          "shown, and guessing among those not yet asked for scores H(n)/n (0.34 at 8 pairs, "
          "0.52 at 4, 0.75 at 2), so the comparisons of recall accuracy count only when "
          "softmax clears 0.9 (otherwise inconclusive). The linear kinds take no rotary "
          "positions (this repo's "
          "choice), so elu+1 and NormAttention see no positions at all; SLA's causal "
          "depthwise convolution and TransNormer's block-diagonal softmax (with RoPE, blocks "
          "of 8 tokens, not the paper's 64) are their only local mixing. Gradient norms are "
          "the logged pre-clipping global norms every 10 steps (training clips at 1.0).",
)

