"""Small-scale proxies for large-scale Transformer training instabilities (Wortsman et al., 2023).

The paper trains small models across learning rates and finds that the instabilities of large
models appear in small ones at high learning rates: attention logits grow until the softmax
collapses, and qk-layernorm prevents it; the output-logit divergence is tamed by z-loss. Its
summary statistic is LR sensitivity, the mean over an LR grid of (loss at that LR − best loss).
Here: a byte-level GPT on pysrc, baseline vs qk-layernorm + z-loss (1e-4), LR 3e-3 … 3e-1.
"""
import math

from jaxlab.experiments.spec import (Claim, Experiment, Verdict, describe, gpt_scales,
                                     judge_lower, lower, mean)

LEARNING_RATES = (3e-3, 3e-2, 3e-1)
VARIANTS = {"base": {}, "qknorm+zloss": {"model.qk_norm": "layer", "train.z_loss": 1e-4}}
ROWS = {f"{variant}-lr{lr:g}": {**overrides, "optim.lr": lr}
        for variant, overrides in VARIANTS.items() for lr in LEARNING_RATES}


INITIAL_LOSS = math.log(256)  # a uniform guess over bytes: the cap on a diverged run's loss


def lr_sensitivity(results, variant: str) -> list[float]:
    """Per seed: mean over the LR grid of (min(final valid loss, initial loss) − the best over
    the grid), the paper's definition."""
    per_lr = [results[f"{variant}-lr{lr:g}"]["valid_loss"] for lr in LEARNING_RATES]
    capped = [[min(loss[s], INITIAL_LOSS) for loss in per_lr] for s in range(len(per_lr[0]))]
    return [mean(losses) - min(losses) for losses in capped]


def less_sensitive(results) -> Verdict:
    ours, base = lr_sensitivity(results, "qknorm+zloss"), lr_sensitivity(results, "base")
    return judge_lower(ours, base, f"LR sensitivity: qknorm+zloss {describe(ours)} vs base "
                                   f"{describe(base)}")


HIGHEST = f"lr{max(LEARNING_RATES):g}"


EXPERIMENT = Experiment(
    name="small_scale_proxies",
    title="Small-scale proxies: LR sensitivity with and without qk-layernorm + z-loss",
    paper="Wortsman et al., Small-scale proxies for large-scale Transformer training "
          "instabilities, 2023 (arXiv:2309.14322)",
    scales=gpt_scales(depth=2, width=64, steps=300, cpu_budget=10,
                      full="depth=12,width=768,heads=12,seq_len=512,steps=10000,batch=256",
                      full_budget=600),
    rows=ROWS,
    metrics=("valid_loss", "train_loss"),
    claims=(
        Claim("instabilities “also appear in small models when training at high learning rates, "
              "and ... mitigations previously employed at large scales are equally effective in "
              "this regime”: qk-layernorm + z-loss lower the LR sensitivity", less_sensitive),
        Claim("“the growth of logits in attention layers” is an instability at high learning "
              "rate that qk-layernorm mitigates: at the highest LR it reaches a lower loss",
              lower("valid_loss", f"qknorm+zloss-{HIGHEST}", f"base-{HIGHEST}")),
    ),
    seeds=2,
    notes="Differences from the paper: bytes instead of C4 tokens, 2 layers of width 64 and 300 "
          "steps at cpu scale, AdamW with weight decay 0.1 (the paper decouples it), 3 learning "
          "rates instead of a dense grid.",
)
