"""On a GPU, impl="auto" hands plain 16-bit softmax norm-attention to XLA's norms plus cuDNN
(jaxlab/kernels/norm_attention/cudnn.py). The CPU checks the choice with the backend set to
"gpu", and the path's math with jax's XLA attention in cuDNN's place; a GPU (JAXLAB_TEST_KERNELS
=pallas) runs the path itself."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxlab import config as config_lib
from jaxlab import models
from jaxlab.kernels import dispatch, last_path
from jaxlab.kernels.norm_attention import cudnn, fused_norm_attention, mosaic_gpu
from jaxlab.kernels.norm_attention.reference import fused_norm_attention_reference
from tests.kernels.helpers import COMPILED, assert_matches_reference

on_the_cpu = pytest.mark.skipif(COMPILED, reason="a GPU runs cuDNN itself")


@pytest.fixture
def gpu_without_cudnn(monkeypatch):
    """Kernels chosen as on a GPU; jax's XLA attention computes what cuDNN would."""
    if COMPILED:
        pytest.skip("a GPU runs cuDNN itself")
    monkeypatch.setattr(dispatch, "backend", lambda: "gpu")
    monkeypatch.setattr(cudnn, "IMPLEMENTATION", "xla")


def qkv(t=32, s=32, dtype=jnp.bfloat16, d=64):
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (2, t, 4, d), dtype)
    k, v = (jax.random.normal(key, (2, s, 2, d), dtype) for key in keys[1:])
    return q, k, v


@on_the_cpu
@pytest.mark.parametrize("qk_norm,causal", [("rms", True), ("layer", False), (None, True)])
def test_norms_then_attention_match_the_reference(qk_norm, causal):
    # float32 here, so that the tolerance checks the math (GQA, scale, norms, gains)
    q, k, v = qkv(dtype=jnp.float32)
    gains = (1 + 0.1 * jax.random.normal(jax.random.key(1), (2, 64)))
    options = dict(qk_norm=qk_norm, causal=causal, sm_scale=0.3, eps=1e-6)
    path = lambda q, k, v, a, b: cudnn.norm_attention(q, k, v, a, b, **options)
    reference = lambda q, k, v, a, b: fused_norm_attention_reference(q, k, v, a, b, **options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cudnn, "IMPLEMENTATION", "xla")
        assert_matches_reference(path, reference, (q, k, v, *gains), jnp.float32)


def test_auto_takes_cudnn_for_plain_softmax(gpu_without_cudnn):
    q, k, v = qkv()
    scale = jnp.ones((64,))
    run = lambda q, k, v: fused_norm_attention(q, k, v, scale, scale, qk_norm="rms",
                                               causal=True, impl="auto")
    assert_matches_reference(
        run, lambda q, k, v: fused_norm_attention_reference(q, k, v, scale, scale,
                                                            qk_norm="rms", causal=True),
        (q, k, v), jnp.bfloat16)
    assert last_path("fused_norm_attention") == "cudnn"


@pytest.mark.parametrize("case,mosaic_takes_it", [
    ("softplus", True), ("length_scale", True), ("key_mask", True), ("causal_t_ne_s", True),
    ("pallas", True), ("segments", False), ("float32", False), ("head_dim_256", False),
    ("triton", False), ("triton_launch", False)])
def test_everything_else_runs_our_kernels(gpu_without_cudnn, case, mosaic_takes_it):
    """Our kernels: on a Hopper GPU (here the abstract H100 of `dispatch.target`) Mosaic GPU's
    where they take the inputs and no Triton launch setting is given, else Triton's."""
    q, k, v = qkv(t=16 if case == "causal_t_ne_s" else 32,
                  dtype=jnp.float32 if case == "float32" else jnp.bfloat16,
                  d=256 if case == "head_dim_256" else 64)
    options = dict(causal=True, impl="pallas" if case == "pallas" else "auto")
    options.update({"softplus": dict(normalizer="softplus"),
                    "length_scale": dict(normalizer="softplus", length_scale=True),
                    "key_mask": dict(key_mask_bs=jnp.ones((2, 32), bool)),
                    "segments": dict(segment_ids=jnp.zeros((2, 32), jnp.int32)),
                    "triton": dict(normalizer="softplus", gpu_kernel="triton"),
                    "triton_launch": dict(normalizer="softplus", num_warps=4)}.get(case, {}))
    # traced only: the compiled kernels cannot run on the CPU
    jax.eval_shape(lambda q, k, v: fused_norm_attention(q, k, v, **options), q, k, v)
    mosaic = mosaic_takes_it and mosaic_gpu.available()  # jax ≥ 0.11
    assert last_path("fused_norm_attention") == ("mosaic" if mosaic else "pallas")


def test_explicit_mosaic_skips_cudnn(gpu_without_cudnn):
    """gpu_kernel="mosaic" asks for our Hopper kernels even where impl="auto" would take cuDNN
    (benchmarks/mfu.py's bf16+mosaic setting compares the two in a model)."""
    if not mosaic_gpu.available():
        pytest.skip(f"Mosaic GPU needs jax ≥ 0.11, this is {jax.__version__}")
    q, k, v = qkv()
    jax.eval_shape(lambda q, k, v: fused_norm_attention(q, k, v, qk_norm="rms", causal=True,
                                                        gpu_kernel="mosaic"), q, k, v)
    assert last_path("fused_norm_attention") == "mosaic"


@pytest.mark.skipif(not COMPILED, reason="needs a GPU with cuDNN")
def test_on_the_gpu_auto_runs_cudnn():
    q, k, v = qkv(t=256, s=256)
    scale = 1 + 0.1 * jax.random.normal(jax.random.key(1), (64,))
    options = dict(qk_norm="rms", causal=True)
    assert_matches_reference(
        lambda q, k, v: fused_norm_attention(q, k, v, scale, scale, impl="auto", **options),
        lambda q, k, v: fused_norm_attention_reference(q, k, v, scale, scale, **options),
        (q, k, v), jnp.bfloat16)
    assert last_path("fused_norm_attention") == "cudnn"


@on_the_cpu
def test_off_the_gpu_auto_is_unchanged():
    q, k, v = qkv()
    fused_norm_attention(q, k, v, causal=True, impl="auto")
    assert last_path("fused_norm_attention") == "xla"


@pytest.mark.parametrize("attention,path", [("softmax", "cudnn"), ("softplus", "mosaic")])
def test_a_bf16_gpt_with_auto_kernels_picks_per_attention_kind(gpu_without_cudnn, attention,
                                                               path):
    """The config defaults end to end: model.kernels=auto with the default
    model.attention_gpu_kernel on a Hopper GPU gives plain softmax attention to cuDNN and
    LSSA (softplus) to the Mosaic GPU kernels (head dim 64, bf16)."""
    config = config_lib.load("configs/lm/gpt.py:runlocal", {
        "model.width": 128, "model.num_heads": 2, "model.dtype": "bfloat16",
        "model.kernels": "auto", "model.attention": attention})
    model = models.build(config.model, nnx.Rngs(0))
    jax.eval_shape(model, jnp.zeros((2, 32), jnp.int32))
    # the Mosaic kernels need jax ≥ 0.11; before, LSSA stays in the Triton kernels
    expected = path if path == "cudnn" or mosaic_gpu.available() else "pallas"
    assert last_path("fused_norm_attention") == expected
