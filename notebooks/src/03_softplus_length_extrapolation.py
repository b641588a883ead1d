# %% [markdown]
# # Softplus attention and length extrapolation
#
# Length-scaled Softplus attention (LSSA, `model.attention=softplus`) keeps softmax's row
# normalisation but maps the scores through Softplus instead of exp, with a scale that grows with
# the log of the number of keys a query sees. The claim to look at: its loss stays nearly flat
# when evaluated on sequences much longer than those it was trained on, where softmax attention
# degrades. We train two small byte-level LMs that differ only in the attention kind, evaluate
# both at 1×…16× the training length, and look at how the re-weighting power p of LSSAR
# (`model.softplus_reweight_p`, which can be changed at inference) sharpens the attention maps.
# `jaxlab/ops/softplus_attention.py` has the exact formulas.

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
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

SMOKE = os.environ.get("JAXLAB_SMOKE") == "1"  # the test suite runs every notebook this way
print("devices:", jax.devices())

# %% [markdown]
# ## Train a softmax and a softplus LM
# The same config twice (a byte-level GPT on the Python standard library sources, RoPE
# positions); only `model.attention` changes. `:runlocal` makes it a seconds-long smoke run.

# %%
from jaxlab import config as config_lib
from jaxlab.train.checkpoint import Checkpointer
from jaxlab.train.loop import Run, train

SPEC = ("configs/lm/gpt.py:runlocal" if SMOKE else
        "configs/lm/gpt.py:depth=2,width=64,heads=4,seq_len=64,steps=600,batch=16")
KINDS = ("softmax", "softplus")
root = tempfile.mkdtemp()


def load_config(attention, **overrides):
    return config_lib.load(SPEC, {"mesh": [("data", -1)], "model.attention": attention,
                                  **overrides})


def trained_model(config, workdir):
    """The model at the latest checkpoint of `workdir`, built from `config`."""
    run = Run(config)
    state, _ = Checkpointer(os.path.join(workdir, "checkpoints")).restore(run.restore_target())
    return run.model_def.merge(state["params"], state["extra"])


models = {}
for kind in KINDS:
    config = load_config(kind)
    summary = train(config, os.path.join(root, kind), progress=not SMOKE, emit=lambda _: None)
    print(f"{kind:9s} valid loss {summary['valid_loss']:.3f} after {summary['steps']} steps")
    models[kind] = trained_model(config, os.path.join(root, kind))
train_length = config.data.seq_len

# %% [markdown]
# ## Valid loss against evaluation length
# `jaxlab.analysis.lengths.eval_lengths` scores the same valid batches cut at each length, so the
# rows differ only in how much context the model sees. Past the training length RoPE meets
# positions it never saw; what matters is how the loss moves, not its level.

# %%
from jaxlab.analysis.lengths import eval_lengths, length_multiples

lengths = length_multiples(train_length, (1, 2, 4) if SMOKE else (1, 2, 4, 8, 16))
curves = {kind: eval_lengths(model, config.data, lengths, batch_size=2 if SMOKE else 4)
          for kind, model in models.items()}

fig, ax = plt.subplots(figsize=(5, 3.2))
for kind, rows in curves.items():
    ax.plot([r["length"] for r in rows], [r["loss"] for r in rows], "o-", label=kind)
ax.axvline(train_length, color="0.7", ls="--", label="training length")
ax.set_xscale("log", base=2)
ax.set_xticks(lengths, [str(n) for n in lengths])
ax.set(xlabel="evaluation length (bytes)", ylabel="valid loss (nats)")
ax.legend()
fig.tight_layout()
plt.show()
for kind, rows in curves.items():
    assert all(np.isfinite(r["loss"]) for r in rows), kind
    print(kind, " ".join(f"{r['length']}: {r['loss']:.3f}" for r in rows))

# %% [markdown]
# ## The re-weighting power p
# LSSAR re-weights every attention row with a power p and normalises it again: p = 1 leaves the
# row as it is, a larger p moves the weight onto the largest entries (the paper uses p = 3 at
# the training length and 15 beyond it). p is a plain config value
# (`model.softplus_reweight_p`), so the trained weights load into a model built with another p
# without retraining. To see a layer's attention map we feed its own attention function one-hot
# values: the output for query i is then row i of the attention matrix.

# %%
from jaxlab.analysis import depth
from jaxlab.ops.attention import apply_rope

powers = (1.0, 3.0, 15.0)


def model_with_power(p):
    config_p = load_config("softplus", **{"model.softplus_reweight_p": p})
    return config_p, trained_model(config_p, os.path.join(root, "softplus"))


def first_layer_attention(model, tokens_bt):
    """Attention weights [b, h, t, s] of block 0 (a Pre-norm block) on tokens [b, t]."""
    stream = depth.hidden_states(model, tokens_bt)[0]  # what enters block 0
    pre_norm = model.blocks[0].attention
    attn, x = pre_norm.sublayer, pre_norm.norm(stream)
    b, t, _ = x.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    q = apply_rope(attn.q(x).reshape(b, t, attn.heads, attn.head_dim), positions, attn.rope_base)
    k = apply_rope(attn.k(x).reshape(b, t, attn.kv_heads, attn.head_dim), positions, attn.rope_base)
    one_hot = jnp.broadcast_to(jnp.eye(t)[None, :, None, :], (b, t, attn.kv_heads, t))
    out_bths = attn.attend(q, k, one_hot, causal=True, key_mask_bs=None)
    return jnp.transpose(out_bths, (0, 2, 1, 3))


tokens = Run(config).batch("valid", 0)["inputs"][:1]
maps = {p: np.asarray(first_layer_attention(model_with_power(p)[1], tokens))[0, 0] for p in powers}

fig, axes = plt.subplots(1, len(powers), figsize=(3.2 * len(powers), 3))
for ax, (p, weights) in zip(axes, maps.items()):
    ax.imshow(weights, cmap="viridis")
    ax.set(title=f"p = {p:g}", xlabel="key", ylabel="query")
fig.tight_layout()
plt.show()


def mean_row_entropy(weights):
    return float(np.mean(-np.sum(weights * np.log(np.where(weights > 0, weights, 1.0)), axis=-1)))


for p, weights in maps.items():
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-4)
    assert np.all(np.triu(weights, 1) == 0), "causal: no weight on later keys"
    print(f"p = {p:g}: mean row entropy {mean_row_entropy(weights):.3f} nats")
entropies = [mean_row_entropy(w) for w in maps.values()]
assert entropies == sorted(entropies, reverse=True), "a larger p should sharpen the maps"

# %% [markdown]
# And the effect of p on the length curve: the same trained weights, built with each p.

# %%
fig, ax = plt.subplots(figsize=(5, 3.2))
for p in powers:
    config_p, model_p = model_with_power(p)
    rows = eval_lengths(model_p, config_p.data, lengths, batch_size=2 if SMOKE else 4)
    ax.plot([r["length"] for r in rows], [r["loss"] for r in rows], "o-", label=f"softplus, p = {p:g}")
ax.axvline(train_length, color="0.7", ls="--")
ax.set_xscale("log", base=2)
ax.set_xticks(lengths, [str(n) for n in lengths])
ax.set(xlabel="evaluation length (bytes)", ylabel="valid loss (nats)")
ax.legend()
fig.tight_layout()
plt.show()
