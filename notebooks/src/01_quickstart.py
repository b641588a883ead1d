# %% [markdown]
# # jaxlab quick start
#
# Train the default experiment (a byte-level GPT on the Python standard library sources), plot its
# curves from `metrics.jsonl`, sample text, and resume from the checkpoint. On Colab pick a GPU or
# TPU runtime if you like; on a CPU the full run takes a few minutes.

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
import jax

SMOKE = os.environ.get("JAXLAB_SMOKE") == "1"  # the test suite runs every notebook this way
print("devices:", jax.devices())

# %% [markdown]
# ## Configure
# A config is a Python file; `:runlocal` shrinks it to a seconds-long run and overrides change any key.

# %%
import tempfile

from jaxlab import config as config_lib

spec = "configs/lm/gpt.py:runlocal" if SMOKE else "configs/lm/gpt.py:steps=300"
config = config_lib.load(spec, {"mesh": [("data", -1)], "log.every": 10 if not SMOKE else 1})
workdir = os.path.join(tempfile.mkdtemp(), "gpt")
print(config.model)

# %% [markdown]
# ## Train

# %%
from jaxlab.train.loop import train

summary = train(config, workdir, progress=not SMOKE)
print({k: v for k, v in summary.items() if k != "sample"})

# %% [markdown]
# ## Curves from `metrics.jsonl`

# %%
import matplotlib.pyplot as plt

from jaxlab.train.metrics import read_jsonl

rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
train_rows = [r for r in rows if "bpb" in r]
valid_rows = [r for r in rows if "valid_bpb" in r]
plt.plot([r["step"] for r in train_rows], [r["bpb"] for r in train_rows], label="train")
plt.plot([r["step"] for r in valid_rows], [r["valid_bpb"] for r in valid_rows], "o-", label="valid")
plt.xlabel("step")
plt.ylabel("bits per byte")
plt.legend()
plt.show()
assert train_rows[-1]["bpb"] < train_rows[0]["bpb"], "the loss should fall"

# %% [markdown]
# ## Sample text from the trained model

# %%
import numpy as np

from jaxlab.models.decoding import generate
from jaxlab.models.sampling import decode_bytes
from jaxlab.train.checkpoint import Checkpointer
from jaxlab.train.loop import Run

run = Run(config)
state, _ = Checkpointer(os.path.join(workdir, "checkpoints")).restore(run.restore_target())
model = run.model_def.merge(state["params"], state["extra"])
prompt = np.frombuffer(b"def main(", dtype=np.uint8).astype(np.int32)
tokens = generate(model, prompt, 16 if SMOKE else 100, temperature=0.8, rng=jax.random.key(0))
print(decode_bytes(prompt) + decode_bytes(np.asarray(tokens)))

# %% [markdown]
# ## Resume
# Pointing `train` at the same workdir continues from the latest checkpoint. Changing the config
# (here: more steps) needs `ckpt.allow_config_change`; the new config is kept beside the old one.

# %%
longer = config_lib.load(spec, {"mesh": [("data", -1)], "train.steps": config.train.steps + 4,
                                 "ckpt.allow_config_change": True})
resumed = train(longer, workdir, progress=False)
print("resumed from step", resumed["resumed_from"], "to", resumed["steps"])
assert resumed["resumed_from"] == config.train.steps
