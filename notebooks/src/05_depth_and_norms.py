# %% [markdown]
# # Depth diagnostics: Pre-LN, LayerNorm Scaling and Peri-LN
#
# "The Curse of Depth" (Sun et al., 2025) observes that in Pre-LN Transformers the variance of
# the residual stream grows with depth, so the deeper blocks barely change it and can be skipped
# at little cost. It proposes LayerNorm Scaling (each block's norm output times 1/√ℓ); Peri-LN
# (Kim et al., 2025) instead normalizes every sublayer's output as well as its input. We train
# the same small byte-level GPT with the three choices and compare, per layer:
#
# - the variance of the hidden state entering it,
# - the angular distance between its input and output (0: the block keeps the direction),
# - how much the loss rises when it is replaced by the identity.

# %%
# Install jaxlab when it is not importable yet (a fresh Colab runtime).
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("jaxlab") is None:
    repo = os.environ.get("JAXLAB_REPO", "https://github.com/jaxlab/jaxlab")
    subprocess.run(["git", "clone", "--depth", "1", repo, "jaxlab"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "jaxlab"], check=True)
    sys.path.insert(0, "jaxlab")  # the running kernel does not see the new install otherwise

# %%
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np

SMOKE = os.environ.get("JAXLAB_SMOKE") == "1"  # the test suite runs every notebook this way
print("devices:", jax.devices())

# %% [markdown]
# ## Three models that differ only in where the norms sit
# `model.norm_position` picks the placement and `model.layernorm_scaling` adds the 1/√ℓ factor;
# everything else (data, seed, optimizer) is shared. In smoke mode the models train for a few
# steps only, so the curves show the machinery rather than the papers' effects.

# %%
from jaxlab import config as config_lib
from jaxlab.train.checkpoint import Checkpointer
from jaxlab.train.loop import Run, train

SPEC = ("configs/lm/gpt.py:runlocal" if SMOKE else
        "configs/lm/gpt.py:depth=12,width=64,heads=4,seq_len=64,steps=600,batch=16")
VARIANTS = {
    "Pre-LN": {"model.norm_position": "pre"},
    "Pre-LN + LayerNorm Scaling": {"model.norm_position": "pre", "model.layernorm_scaling": True},
    "Peri-LN": {"model.norm_position": "peri"},
}
shared = {"mesh": [("data", -1)], "model.norm": "layernorm", **({"model.depth": 4} if SMOKE else {})}
root = tempfile.mkdtemp()

trained = {}
for name, overrides in VARIANTS.items():
    config = config_lib.load(SPEC, {**shared, **overrides})
    workdir = os.path.join(root, name.replace(" ", "_"))
    summary = train(config, workdir, progress=not SMOKE, emit=lambda _: None)
    run = Run(config)
    state, _ = Checkpointer(os.path.join(workdir, "checkpoints")).restore(run.restore_target())
    trained[name] = (run, run.model_def.merge(state["params"], state["extra"]))
    print(f"{name:28s} valid loss {summary['valid_loss']:.3f}")

# %% [markdown]
# ## The diagnostics
# `jaxlab.analysis.depth.depth_report` runs them all on one batch: hidden state ℓ is the residual
# stream entering block ℓ (ℓ = 0 is the embedding output), and the last one the output of the
# last block, before the final norm.

# %%
from jaxlab.analysis import depth

reports = {name: depth.depth_report(model, run.batch("valid", 0))
           for name, (run, model) in trained.items()}
num_layers = config.model.depth
for name, report in reports.items():
    assert report["variance"].shape == (num_layers + 1,), name
    assert report["angular_distance"].shape == report["skip_loss_change"].shape == (num_layers,)
    assert all(np.all(np.isfinite(v)) for v in report.values()), name

fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
for name, report in reports.items():
    axes[0].plot(report["variance"], "o-", label=name)
    axes[1].plot(np.arange(1, num_layers + 1), report["angular_distance"], "o-", label=name)
    axes[2].plot(np.arange(1, num_layers + 1), report["skip_loss_change"], "o-", label=name)
axes[0].set(xlabel="hidden state ℓ", ylabel="variance over features", yscale="log",
            title="residual stream variance")
axes[1].set(xlabel="layer", ylabel="arccos(cos(h_ℓ, h_ℓ+1)) / π", title="angular distance")
axes[2].set(xlabel="layer skipped", ylabel="loss change", title="skip one layer")
axes[0].set_xticks(range(num_layers + 1))
for ax in axes[1:]:
    ax.set_xticks(range(1, num_layers + 1))
axes[0].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# What the papers report: Pre-LN's variance climbs layer after layer and its deep layers have
# small angular distances and small skip costs; LayerNorm Scaling damps the growth and Peri-LN
# keeps it in check. Whether a small model shows it depends on depth and training length (the
# ratios below divide by the embedding's variance, which is small at initialisation).
# `jaxlab reproduce curse_of_depth` and `jaxlab reproduce peri_ln` measure the same quantities
# over seeds and judge the papers' claims.

# %%
for name, report in reports.items():
    deep = slice(num_layers // 2, None)
    print(f"{name:28s} variance growth {report['variance'][-1] / report['variance'][0]:8.2f}   "
          f"deep-half skip cost {np.mean(report['skip_loss_change'][deep]):.4f}")
