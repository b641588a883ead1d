# %% [markdown]
# # Kolmogorov-Arnold networks: fit, look inside, refine, prune
#
# A KAN puts a learned univariate function φ on every edge and sums them at each node. We fit the
# KAN paper's toy f(x, y) = exp(sin(πx) + y²) with a [2, 5, 1] B-spline KAN
# (`configs/kan/fit.py`), plot the learned edge functions, refine the spline grid (grid
# extension), then sparsify with the L1 + entropy penalty and prune edges and nodes until the
# network shows the structure of f: one hidden node, exp of (a sine of x plus a square of y).

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

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx

SMOKE = os.environ.get("JAXLAB_SMOKE") == "1"  # the test suite runs every notebook this way
STEPS = 40 if SMOKE else 400  # per hand-written training stage below

# %% [markdown]
# ## Fit with the trainer
# The config trains the KAN with the `mse` loss on 1000 fixed points (under a minute on a CPU);
# `:runlocal` shrinks it to a few steps.

# %%
from jaxlab import config as config_lib
from jaxlab.train.checkpoint import Checkpointer
from jaxlab.train.loop import Run, train

config = config_lib.load("configs/kan/fit.py" + (":runlocal" if SMOKE else ""),
                         {"mesh": [("data", -1)]})
workdir = os.path.join(tempfile.mkdtemp(), "kan")
summary = train(config, workdir, progress=not SMOKE, emit=lambda _: None)
print(f"valid mse after {summary['steps']} steps: {summary['valid_loss']:.2e}")

run = Run(config)
state, _ = Checkpointer(os.path.join(workdir, "checkpoints")).restore(run.restore_target())
model = run.model_def.merge(state["params"], state["extra"])

# %% [markdown]
# The trainer keeps the grid fixed. Grid refits, extension and pruning are steps between
# training stages, so from here on we train with a short hand-written loop on the same points.

# %%
(x, y), (x_valid, y_valid) = (tuple(map(jnp.asarray, run.dataset.splits[s])) for s in ("train", "valid"))


def valid_mse(model):
    return float(jnp.mean((model(x_valid)[:, 0] - y_valid) ** 2))


def fit(model, steps, lr=1e-2, sparsity=0.0):
    """Adam on mse + sparsity · (L1 + entropy penalty on the edge magnitudes)."""
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss(m):
            return jnp.mean((m(x)[:, 0] - y) ** 2) + sparsity * m.regularization(x)
        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return value

    for _ in range(steps):
        step(model, optimizer)
    return valid_mse(model)


def layer_by_layer(model, fn):
    """fn(layer, its inputs on the training points), from the first layer to the last."""
    h = x
    for layer in model.layers:
        fn(layer, h)
        h = layer(h)

# %% [markdown]
# ## The learned edge functions
# `plot_edge_functions` draws φ_oi for every edge (rows: outputs, columns: inputs), each over the
# range its inputs actually take.

# %%
from jaxlab.layers.kan import plot_edge_functions


def plot_model(model, title):
    h = x
    for i, layer in enumerate(model.layers):
        fig, _ = plot_edge_functions(layer, float(h.min()), float(h.max()))
        fig.suptitle(f"{title}: layer {i} ({layer.in_features} → {layer.out_features})", fontsize=9)
        fig.tight_layout()
        plt.show()
        h = layer(h)


plot_model(model, "after training")

# %% [markdown]
# ## Grid extension
# A finer grid gives every φ more resolution. `update_grid(x)` first moves each layer's knots to
# where its inputs lie (the hidden values leave the initial [−1, 1]); `extend_grid(G', x)` then
# refits the coefficients on the finer grid by least squares, so the network computes (almost)
# the same function right after the change, and further training can use the extra knots.

# %%
before = np.asarray(model(x_valid))
grid = model.layers[0].grid_size
layer_by_layer(model, lambda layer, h: layer.update_grid(h))
layer_by_layer(model, lambda layer, h: layer.extend_grid(2 * grid, h))
change = np.abs(np.asarray(model(x_valid)) - before).max()
print(f"grid {grid} → {model.layers[0].grid_size}: largest output change {change:.1e}")
assert change < 1e-2 * (1 + np.abs(before).max()), "the refit should keep the function"
print(f"valid mse after training on the finer grid: {fit(model, STEPS):.2e}")

# %% [markdown]
# ## Sparsify, then prune
# Training with the L1 + entropy penalty pushes unneeded edges towards zero. `prune_edges` then
# switches off every edge whose mean |φ| on the data is below a threshold (the plots grey them
# out), and `prune_nodes` removes hidden nodes left with no strong incoming or outgoing edge.

# %%
print(f"valid mse with the sparsity penalty: {fit(model, 2 * STEPS, sparsity=1e-2):.2e}")
layer_by_layer(model, lambda layer, h: print(
    f"{layer.prune_edges(h, threshold=3e-2)} of {layer.in_features * layer.out_features} edges off"))
plot_model(model, "pruned edges in grey")

widths = model.prune_nodes(x, threshold=3e-2)
print("widths after node pruning:", widths)
print(f"valid mse after pruning and a last fit: {fit(model, STEPS):.2e}")
if not SMOKE:  # a few smoke steps are too few to sparsify
    assert widths[1] < 5, "pruning should remove hidden nodes"
plot_model(model, "pruned")
