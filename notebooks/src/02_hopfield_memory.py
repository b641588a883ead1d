# %% [markdown]
# # Hopfield memory: storing and retrieving digits
#
# A modern Hopfield network stores patterns X (one per row) and retrieves from a query ξ with
# the update ξ ← Xᵀ softmax(β X ξ), which is softmax attention with the stored patterns as keys
# and values. Here we store handwritten digits, query with half-erased ones, and watch the
# inverse temperature β decide what comes back: the average of everything (small β), an average
# of a few similar patterns, a *metastable state* (medium β), or the one stored digit (large β).
# Every update lowers the network's energy, which we check along the iterations.

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
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

SMOKE = os.environ.get("JAXLAB_SMOKE") == "1"  # the test suite runs every notebook this way

# %% [markdown]
# ## The stored patterns
# A few images of each digit from the repository's `digits` dataset (scikit-learn's 8×8 digits).
# We subtract the mean image and scale every pattern to unit length, so that β alone sets how
# peaked the softmax over patterns is.

# %%
from jaxlab.data.digits import load_digits_splits

images, labels = load_digits_splits()["train"]
per_digit = 3 if SMOKE else 5
picked = np.concatenate([np.flatnonzero(labels == d)[:per_digit] for d in range(10)])
stored_labels = labels[picked]
raw = images[picked].reshape(len(picked), 64)
mean_image = raw.mean(axis=0)
stored = raw - mean_image
stored /= np.linalg.norm(stored, axis=1, keepdims=True)
num_stored = len(stored)


def show_row(axes, patterns, title=None):
    """One 8×8 image per axis, all on the same grey scale (0, the mean image, is mid-grey)."""
    limit = np.abs(stored).max()
    for ax, pattern in zip(axes, patterns):
        ax.imshow(np.asarray(pattern).reshape(8, 8), cmap="gray_r", vmin=-limit, vmax=limit)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        axes[0].set_ylabel(title, rotation=0, ha="right", va="center")


fig, axes = plt.subplots(1, num_stored, figsize=(num_stored * 0.5, 0.7))
show_row(axes, stored)
fig.suptitle(f"{num_stored} stored patterns (mean image removed)")
plt.show()

# %% [markdown]
# ## Queries: digits with their lower half erased
# Erasing means setting the pixels to the mean image, i.e. to zero after centring.

# %%
queries = stored.copy()
queries[:, 32:] = 0.0
show_digits = np.arange(0, num_stored, per_digit)  # the first stored image of each digit

# %% [markdown]
# ## Retrieval at three values of β
# `Hopfield.pure` is the layer with no projections and no norms: its output is exactly the
# update ξ ← Xᵀ softmax(β X ξ), applied `1 + update_steps_max` times. With
# `return_association=True` it also returns the softmax weights over the stored patterns.

# %%
from jaxlab.layers.hopfield import Hopfield
from jaxlab.ops import hopfield as hopfield_ops

STEPS = 5  # updates after the first one
stored_b = jnp.asarray(stored)[None]  # the layer is batch-first: [1, patterns, 64]
queries_b = jnp.asarray(queries)[None]


def retrieve(beta):
    layer = Hopfield.pure(64, scaling=beta, update_steps_max=STEPS)
    out, xi = layer(stored=stored_b, state=queries_b, return_association=True)
    return np.asarray(out[0]), np.asarray(xi[0, 0])  # [queries, 64], [queries, patterns]


def participation(weights):
    """1 / Σ p²: how many stored patterns a retrieval mixes (1 = a single pattern)."""
    return 1.0 / np.sum(weights ** 2, axis=-1)


betas = {"small β = 1": 1.0, "medium β = 8": 8.0, "large β = 100": 100.0}
retrieved = {name: retrieve(beta) for name, beta in betas.items()}

rows = {"query": queries, **{name: out for name, (out, _) in retrieved.items()}, "stored": stored}
fig, axes = plt.subplots(len(rows), len(show_digits), figsize=(len(show_digits) * 0.8, len(rows)))
for ax_row, (name, patterns) in zip(axes, rows.items()):
    show_row(ax_row, patterns[show_digits], name)
fig.tight_layout()
plt.show()

for name, (_, xi) in retrieved.items():
    same_digit = np.mean([xi[i, stored_labels == stored_labels[i]].sum() for i in range(num_stored)])
    print(f"{name:14s} mixes {participation(xi).mean():5.2f} patterns on average; "
          f"{100 * same_digit:3.0f}% of the weight on the query's own digit")

# %% [markdown]
# At small β the softmax is almost uniform: every query returns (nearly) the global average,
# which after centring is a blank, uniformly grey image. At large β one stored pattern takes all the weight and
# the erased half is filled in. In between, a query settles on a blend of a few similar patterns.
# The same update is available as a pure function, `jaxlab.ops.hopfield.retrieve`.

# %%
small, large = retrieved["small β = 1"][1], retrieved["large β = 100"][1]
assert participation(small).mean() > 0.8 * num_stored, "small β should average globally"
assert participation(large).mean() < 1.2, "large β should retrieve single patterns"
assert np.mean(large.argmax(-1) == np.arange(num_stored)) > 0.8, "…mostly the query's own"
by_op = hopfield_ops.retrieve(queries_b, stored_b, 100.0, steps=1 + STEPS)[0]
np.testing.assert_allclose(by_op, retrieved["large β = 100"][0], atol=1e-3)

# %% [markdown]
# ## From global averaging to single patterns
# Sweeping β shows the three regimes: the number of patterns a retrieval mixes falls from all of
# them to one, passing through metastable states that mix the images of one digit.

# %%
sweep = np.geomspace(0.5, 200, 8 if SMOKE else 24)
mixes, own_digit = [], []
for beta in sweep:
    _, xi = retrieve(beta)
    mixes.append(participation(xi).mean())
    own_digit.append(np.mean([xi[i, stored_labels == stored_labels[i]].sum()
                              for i in range(num_stored)]))

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3))
left.semilogx(sweep, mixes, "o-")
left.set(xlabel="β", ylabel="patterns mixed (1 / Σp²)", yscale="log")
right.semilogx(sweep, own_digit, "o-")
right.set(xlabel="β", ylabel="weight on the query's digit")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The energy never increases
# E(ξ) = −β⁻¹ log Σᵢ exp(β xᵢ·ξ) + ½ ξ·ξ + const. The update is a concave-convex procedure step
# on E, so E(ξₜ₊₁) ≤ E(ξₜ) for every query and every β. `Hopfield.energy(step=t)` evaluates E
# after t updates.

# %%
fig, ax = plt.subplots(figsize=(5, 3))
for name, beta in betas.items():
    layer = Hopfield.pure(64, scaling=beta)
    energies = np.stack([np.asarray(layer.energy(stored_b, queries_b, step=t))[0, 0]
                         for t in range(STEPS + 2)])  # [steps, queries]
    rises = np.diff(energies, axis=0)
    assert np.all(rises <= 1e-5 * np.maximum(1.0, np.abs(energies[:-1]))), \
        f"the energy increased at {name}: {rises.max():.2e}"
    ax.plot(energies.mean(axis=1), "o-", label=name)
ax.set(xlabel="update", ylabel="mean energy over the queries")
ax.legend()
fig.tight_layout()
plt.show()
