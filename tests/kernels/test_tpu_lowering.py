"""The kernels lower to Mosaic TPU without a TPU: `dispatch.target("tpu")` builds the TPU path
(for an abstract TPU v5e) and `lower(lowering_platforms=("tpu",))` runs the Pallas-to-Mosaic
lowering on the CPU, so a block that breaks the (8, 128) tiling rules or a primitive Mosaic
lacks fails in CI. Mosaic's own compiler (layouts, VMEM, the chip) runs only on a TPU: this
checks lowering, not compilation. The TPU layouts' values are checked by interpreting them."""
import jax
import jax.numpy as jnp
import pytest

from jaxlab.errors import ConfigError
from jaxlab.kernels import dispatch
from jaxlab.kernels.fused_norm import fused_norm
from jaxlab.kernels.fused_norm.reference import fused_norm_reference
from jaxlab.kernels.linear_attention import chunked_linear_attention
from jaxlab.kernels.linear_attention.reference import chunked_linear_attention_reference
from jaxlab.kernels.norm_attention import fused_norm_attention
from jaxlab.kernels.norm_attention.reference import fused_norm_attention_reference
from tests.kernels.helpers import assert_matches_reference


def lower_for_tpu(fn, *args, grad: bool = True) -> str:
    """The jitted `fn` (or its gradient in every argument), lowered for TPU; the StableHLO text."""
    if grad:
        fn = jax.grad(fn, argnums=tuple(range(len(args))))
    with dispatch.target("tpu"):
        return jax.jit(fn).trace(*args).lower(lowering_platforms=("tpu",)).as_text()


def mosaic_calls(text: str) -> int:
    return text.count("tpu_custom_call")


NORM_ATTENTION_CASES = [("softmax", "rms", True, False), ("softplus", "layer", False, False),
                        ("softmax", None, False, False), ("softplus", "rms", False, True)]


def norm_attention_loss(normalizer, qk_norm, segmented, length_scale, causal, t=40, s=300):
    ids = (jnp.zeros((2, t), jnp.int32), jnp.zeros((2, s), jnp.int32)) if segmented else None
    return lambda q, k, v, a, b: fused_norm_attention(
        q, k, v, a, b, jnp.ones((2, s), bool), qk_norm=qk_norm, normalizer=normalizer,
        causal=causal, segment_ids=ids, length_scale=length_scale, impl="pallas").astype(
        jnp.float32).sum()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalizer,qk_norm,segmented,length_scale", NORM_ATTENTION_CASES)
def test_norm_attention_lowers(dtype, causal, normalizer, qk_norm, segmented, length_scale):
    # 300 keys: three key blocks, the last one ragged; GQA with two query heads per key head
    q, k = jnp.ones((2, 40, 4, 64), dtype), jnp.ones((2, 300, 2, 64), dtype)
    loss = norm_attention_loss(normalizer, qk_norm, segmented, length_scale, causal)
    scale = jnp.ones((64,))
    assert mosaic_calls(lower_for_tpu(loss, q, k, k, scale, scale)) == 3  # fwd, dq, dk/dv
    assert mosaic_calls(lower_for_tpu(loss, q, k, k, scale, scale, grad=False)) == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["rms", "layer"])
@pytest.mark.parametrize("with_residual,launch", [
    (True, {}), (False, {}), (True, dict(block_rows=64, step_rows=16))])
def test_fused_norm_lowers(dtype, kind, with_residual, launch):
    x = jnp.ones((300, 256), dtype)  # several row blocks, the last one padded
    residual = x if with_residual else None
    loss = lambda x, w, b: sum(y.astype(jnp.float32).sum() for y in jax.tree.leaves(
        fused_norm(x, w, b, residual, kind=kind, impl="pallas", **launch)))
    args = (x, jnp.ones(256), jnp.zeros(256))
    assert mosaic_calls(lower_for_tpu(loss, *args)) == 2
    assert mosaic_calls(lower_for_tpu(loss, *args, grad=False)) == 1


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("output_norm,normalize", [(False, True), (True, True), (True, False)])
def test_linear_attention_lowers(dtype, output_norm, normalize):
    q = jnp.ones((2, 50, 2, 64), dtype)
    loss = lambda q, k, v, g: chunked_linear_attention(
        q, k, v, g, output_norm=output_norm, normalize=normalize, chunk_size=16,
        impl="pallas").astype(jnp.float32).sum()
    # dQ and dK/dV: the gradient of a sum never reads the forward's output, so XLA drops it
    assert mosaic_calls(lower_for_tpu(loss, q, q, q, jnp.ones(64))) == 2
    assert mosaic_calls(lower_for_tpu(loss, q, q, q, jnp.ones(64), grad=False)) == 1


def test_compiler_params_name_the_grid_axes():
    from jax.experimental.pallas import tpu as pltpu
    with dispatch.target("tpu"):
        params = dispatch.compiler_params(dimension_semantics=("parallel", "arbitrary"))
    assert isinstance(params, pltpu.CompilerParams)
    assert tuple(params.dimension_semantics) == ("parallel", "arbitrary")


@pytest.mark.parametrize("case", ["fused_norm", "block_k", "long", "chunk"])
def test_auto_falls_back_to_xla_for_shapes_the_tpu_kernels_refuse(case):
    """auto takes XLA (no Mosaic call) with a reason; explicit pallas raises that reason."""
    if case == "fused_norm":
        x = jnp.ones((16, 100))
        op, reason = "fused_norm", "multiple of 128"
        call = lambda impl: fused_norm(x, jnp.ones(100), kind="rms", impl=impl)
    elif case == "chunk":
        x = jnp.ones((1, 48, 1, 64))
        op, reason = "chunked_linear_attention", "multiple of 8"
        call = lambda impl: chunked_linear_attention(x, x, x, chunk_size=12, impl=impl)
    else:
        t, block_k = (64, 64) if case == "block_k" else (16384, None)
        x = jnp.ones((1, t, 1, 128), jnp.bfloat16)
        op, reason = "fused_norm_attention", "block_k" if case == "block_k" else "VMEM"
        call = lambda impl: fused_norm_attention(x, x, x, block_k=block_k, impl=impl)
    assert mosaic_calls(lower_for_tpu(lambda x: call("auto"), x, grad=False)) == 0
    assert dispatch.last_path(op) == "xla"
    with pytest.raises(ConfigError, match=reason):
        lower_for_tpu(lambda x: call("pallas"), x, grad=False)


@pytest.fixture
def tpu_layouts(monkeypatch):
    """Kernels built as for a TPU (lane-dense layouts, TPU blocks), run by the interpreter."""
    monkeypatch.setattr(dispatch, "backend", lambda: "tpu")


@pytest.mark.parametrize("normalizer,qk_norm,segmented,length_scale", NORM_ATTENTION_CASES[:2]
                         + NORM_ATTENTION_CASES[3:])
def test_norm_attention_tpu_layout_values(tpu_layouts, normalizer, qk_norm, segmented,
                                          length_scale):
    keys = jax.random.split(jax.random.key(3), 4)
    q = jax.random.normal(keys[0], (1, 20, 2, 16))
    k, v = (jax.random.normal(key, (1, 140, 1, 16)) for key in keys[1:3])
    mask = jax.random.bernoulli(keys[3], 0.8, (1, 140))
    ids = ((jnp.arange(20) // 7)[None], (jnp.arange(140) // 50)[None]) if segmented else None
    options = dict(qk_norm=qk_norm, normalizer=normalizer, causal=True, segment_ids=ids,
                   length_scale=length_scale)
    assert_matches_reference(
        lambda q, k, v: fused_norm_attention(q, k, v, None, None, mask, impl="interpret",
                                             **options),
        lambda q, k, v: fused_norm_attention_reference(q, k, v, None, None, mask, **options),
        (q, k, v), jnp.float32)


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_fused_norm_tpu_layout_values(tpu_layouts, kind):
    x, r = jax.random.normal(jax.random.key(0), (2, 2, 70, 128))  # 140 rows: 2 blocks of 128
    w = 1.0 + jax.random.normal(jax.random.key(1), (128,))
    b = jax.random.normal(jax.random.key(2), (128,))
    # the layer norm's kernels walk each block 8 rows (one float32 tile) at a time
    launch = dict(step_rows=8) if kind == "layer" else {}
    assert_matches_reference(lambda *a: fused_norm(*a, kind=kind, impl="interpret", **launch),
                             lambda *a: fused_norm_reference(*a, kind=kind), (x, w, b, r),
                             jnp.float32)


def test_fused_norm_tpu_steps_are_whole_tiles(tpu_layouts):
    x = jnp.ones((64, 128), jnp.bfloat16)
    with pytest.raises(ConfigError, match="step_rows 8 is not a multiple of 16"):
        fused_norm(x, jnp.ones(128), impl="interpret", step_rows=8)


@pytest.mark.parametrize("output_norm,normalize", [(True, True), (False, False)])
def test_linear_attention_tpu_layout_values(tpu_layouts, output_norm, normalize):
    keys = jax.random.split(jax.random.key(5), 4)
    q, k = (0.5 * jax.random.normal(key, (1, 40, 2, 16)) for key in keys[:2])
    v = jax.random.normal(keys[2], (1, 40, 2, 16))
    gain = 1.0 + 0.1 * jax.random.normal(keys[3], (16,))
    options = dict(output_norm=output_norm, normalize=normalize)
    assert_matches_reference(
        lambda q, k, v, g: chunked_linear_attention(q, k, v, g, chunk_size=16,
                                                    impl="interpret", **options),
        lambda q, k, v, g: chunked_linear_attention_reference(q, k, v, g, **options),
        (q, k, v, gain), jnp.float32)
