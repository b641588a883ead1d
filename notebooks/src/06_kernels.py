# %% [markdown]
# # Pallas kernels against their references
#
# jaxlab's kernels (fused RMSNorm/LayerNorm, fused norm-attention with softmax or softplus
# normalization, chunked linear attention) each have an XLA reference. Here we check values and
# gradients of every kernel against it, then time them when the runtime has a GPU. On a CPU the
# kernels run in Pallas's interpreter: correct, but far slower than XLA, so no timings there.

# %%
import importlib.util
import os
import subprocess
import sys

if importlib.util.find_spec("jaxlab") is None:
    repo = os.environ.get("JAXLAB_REPO", "https://github.com/jaxlab/jaxlab")
    subprocess.run(["git", "clone", "--depth", "1", repo, "jaxlab"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "jaxlab"], check=True)
    sys.path.insert(0, "jaxlab")

# %%
import jax
import jax.numpy as jnp

SMOKE = os.environ.get("JAXLAB_SMOKE") == "1"
ON_ACCELERATOR = jax.default_backend() in ("gpu", "tpu")
KERNEL = "pallas" if ON_ACCELERATOR else "interpret"
print(jax.devices(), "-> kernels run as", KERNEL)

# %%
from jaxlab.kernels import last_path
from jaxlab.kernels.fused_norm import fused_norm
from jaxlab.kernels.linear_attention import chunked_linear_attention
from jaxlab.kernels.norm_attention import fused_norm_attention


def max_errors(fn, args):
    """Largest |kernel − reference| of the outputs and of the gradients (VJP of a random cotangent)."""
    out, vjp = jax.vjp(lambda *a: fn(*a, impl=KERNEL), *args)
    path = last_path(fn.__name__)
    ref, ref_vjp = jax.vjp(lambda *a: fn(*a, impl="xla"), *args)
    cot = jax.random.normal(jax.random.key(1), out.shape, out.dtype)
    grads = [float(jnp.abs(a - b).max()) for a, b in zip(vjp(cot), ref_vjp(cot))]
    return path, float(jnp.abs(out - ref).max()), max(grads)


t = 48 if SMOKE else 256
keys = jax.random.split(jax.random.key(0), 4)
x = jax.random.normal(keys[0], (64, 128))
q, k, v = (jax.random.normal(kk, (2, t, 4, 32)) for kk in keys[1:])
scale = jnp.ones(32)
checks = {
    "fused_norm": (lambda x, w, impl: fused_norm(x, w, kind="rms", impl=impl), (x, jnp.ones(128))),
    "fused_norm_attention": (
        lambda q, k, v, impl: fused_norm_attention(q, k, v, scale, scale, qk_norm="rms",
                                                   causal=True, impl=impl), (q, k, v)),
    "fused_norm_attention (softplus)": (
        lambda q, k, v, impl: fused_norm_attention(q, k, v, normalizer="softplus", causal=True,
                                                   impl=impl), (q, k, v)),
    "chunked_linear_attention": (
        lambda q, k, v, impl: chunked_linear_attention(q, k, v, chunk_size=16, impl=impl), (q, k, v)),
}
for name, (fn, args) in checks.items():
    fn.__name__ = name.split(" ")[0]
    path, out_err, grad_err = max_errors(fn, args)
    print(f"{name:32s} ran as {path:9s} max |Δout| {out_err:.1e}  max |Δgrad| {grad_err:.1e}")
    assert out_err < 1e-4 and grad_err < 1e-3

# %% [markdown]
# ## Timings (GPU/TPU only)
# `benchmarks/kernels.py` is the full benchmark; this cell times one shape.

# %%
from benchmarks.timing import interleaved

if ON_ACCELERATOR:
    q, k, v = (jax.random.normal(kk, (4, 4096, 16, 64), jnp.bfloat16) for kk in keys[1:])
    attend = {impl: jax.jit(lambda q, k, v, impl=impl: fused_norm_attention(
        q, k, v, qk_norm="rms", causal=True, impl=impl)) for impl in ("pallas", "xla")}
    times = interleaved({impl: (lambda f=f: f(q, k, v)) for impl, f in attend.items()})
    print({impl: f"{1e3 * s:.2f} ms" for impl, s in times.items()},
          f"speed-up {times['xla'] / times['pallas']:.2f}x")
else:
    print("no accelerator: skipping timings")
