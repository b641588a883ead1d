"""Fused norm-attention (softmax and softplus) in interpret mode against the XLA reference:
the Triton-lowered kernels of pallas.py (test_mosaic_gpu.py tests the Mosaic GPU ones)."""
import functools

import jax
import jax.numpy as jnp
import pytest
from hypothesis import assume, given, strategies as st

from jaxlab.kernels.norm_attention import fused_norm_attention as any_kernel
from jaxlab.ops.attention import softmax_attention
from jaxlab.errors import ConfigError
from tests.kernels.flash_arithmetic import flash_answers
from tests.kernels.helpers import (COMPILED, KERNEL_IMPL, SMALL_DIMS, assert_matches_reference,
                                   close, distance, examples, to_float32,
                                   with_changed_gradient, yardstick_beside_reference)

# On a Hopper GPU gpu_kernel="auto" would hand 16-bit head dims 64 and 128 to Mosaic GPU.
fused_norm_attention = functools.partial(any_kernel, gpu_kernel="triton")

STRATEGIES = dict(
    t=st.integers(1, 40),
    extra_keys=st.sampled_from([0, 7]),
    heads=st.sampled_from([(2, 2), (4, 2), (2, 1)]),
    d=st.sampled_from(SMALL_DIMS),
    qk_norm=st.sampled_from([None, "rms", "layer"]),
    normalizer=st.sampled_from(["softmax", "softplus"]),
    causal=st.booleans(),
    masked=st.booleans(),
    segmented=st.booleans(),
    length_scale=st.booleans(),  # LSSA's: logits × log d · log n_i, n_i the keys query i sees
    dtype=st.sampled_from([jnp.float32, jnp.bfloat16]))


def parity_case(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, segmented,
                length_scale, dtype):
    """(kernel, reference, args, yardstick) of one drawn case: the kernel path and the XLA
    reference as functions of args = (q, k, v, q_scale, k_scale), and the kernels' arithmetic
    (tests/kernels/flash_arithmetic.py) as the 16-bit yardstick."""
    h, h_kv = heads
    s = t + extra_keys
    keys = jax.random.split(jax.random.key(t * 31 + s), 6)
    q = (2 * jax.random.normal(keys[0], (2, t, h, d))).astype(dtype)
    k = (2 * jax.random.normal(keys[1], (2, s, h_kv, d))).astype(dtype)
    v = jax.random.normal(keys[2], (2, s, h_kv, d)).astype(dtype)
    q_scale = 1 + 0.1 * jax.random.normal(keys[3], (d,))
    k_scale = 1 + 0.1 * jax.random.normal(keys[4], (d,))
    mask = jax.random.bernoulli(keys[5], 0.7, (2, s)) if masked else None
    segments = None
    if segmented:  # packed sequences: ids rise along time, queries and keys end-aligned
        q_ids = jnp.cumsum(jax.random.bernoulli(keys[5], 0.15, (2, s)), axis=1)
        segments = (q_ids[:, s - t:], q_ids)
    options = dict(qk_norm=qk_norm, normalizer=normalizer, causal=causal,
                   segment_ids=segments, length_scale=length_scale)
    call = lambda impl: (lambda q, k, v, a, b: fused_norm_attention(
        q, k, v, a, b, mask, impl=impl, block_q=16, block_k=16, **options))
    return (call(KERNEL_IMPL), call("xla"), (q, k, v, q_scale, k_scale),
            flash_answers(mask, options, dtype))


def check_matches_reference(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, segmented,
                            length_scale, dtype, flash_yardstick=True):
    """parity_case's kernel against its reference (and its yardstick, unless told not to)."""
    if segmented and length_scale:  # refused: the API counts no keys per segment
        assume(False)
    kernel, reference_fn, args, yardstick = parity_case(
        t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, segmented, length_scale,
        dtype)
    assert_matches_reference(kernel, reference_fn, args, dtype,
                             yardstick=yardstick if flash_yardstick else None)


@examples(3)
@given(**STRATEGIES)
def test_matches_reference(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, segmented,
                           length_scale, dtype):
    check_matches_reference(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, segmented,
                            length_scale, dtype)


@examples(4)
@given(**STRATEGIES)
def test_the_kernels_arithmetic_in_float32_is_the_reference(t, extra_keys, heads, d, qk_norm,
                                                            normalizer, causal, masked, segmented,
                                                            length_scale, dtype):
    """The 16-bit yardstick rounds where the kernels do and is otherwise exact math: in
    float32, where its roundings do nothing, it must give the reference's values and VJP."""
    if segmented and length_scale:
        assume(False)
    _, reference_fn, args, yardstick = parity_case(
        t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, segmented, length_scale,
        jnp.float32)
    for got, want in yardstick_beside_reference(yardstick, reference_fn, args):
        close(got, want, 1e-5)


@pytest.mark.slow
@examples(15)
@given(**STRATEGIES)
def test_matches_reference_wide(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked,
                                segmented, length_scale, dtype):
    check_matches_reference(t, extra_keys, heads, d, qk_norm, normalizer, causal, masked, segmented,
                            length_scale, dtype)


def test_queries_that_see_one_key_match_a_flash_backward():
    """A soak's find (bf16, no norm, softplus, key mask and segments): where a query sees one
    key its true dq is 0, and the kernel's dq there is the rounding of δ alone, 0.021 from
    float32 against a tolerance of 0.02. It matches exact math with δ of the kernel's own
    output (tests/kernels/flash_arithmetic.py), which is how every flash backward takes δ."""
    case = (9, 0, (2, 2), SMALL_DIMS[0], None, "softplus", True, True, True, False,
            jnp.bfloat16)
    check_matches_reference(*case)
    if not COMPILED:  # the interpreter's rounding is this case's: without the yardstick, off
        with pytest.raises(AssertionError, match="answer 1 "):
            check_matches_reference(*case, flash_yardstick=False)


def test_a_gain_gradient_over_many_rows_matches_the_kernels_arithmetic():
    """A soak's find (bf16, rms, softmax, 2 × 23 queries × 2 heads): the query gain's gradient
    sums dq'·q̂ over 92 rows, and the roundings every flash kernel makes (q' and k' for the
    scores, the weights for P·V, dS for its products) move it 0.034 from float32, against a
    tolerance of 0.032; the kernel's arithmetic done exactly lands there too. A kernel off by
    3% in that gradient fails even so."""
    case = (23, 0, (2, 2), SMALL_DIMS[0], "rms", "softmax", False, False, False, False,
            jnp.bfloat16)
    kernel, reference_fn, args, yardstick = parity_case(*case)
    if not COMPILED:  # the soak's case (head dim 8): the roundings alone miss the tolerance
        out = kernel(*args)
        cotangent = jax.random.normal(jax.random.key(7), out.shape).astype(out.dtype)
        rounded_gain = yardstick(args, cotangent, out)[4]
        exact_gain = jax.vjp(reference_fn, *to_float32(args))[1](to_float32(cotangent))[3]
        assert distance(rounded_gain, exact_gain) > 2e-2 * float(jnp.abs(exact_gain).max())
    assert_matches_reference(kernel, reference_fn, args, jnp.bfloat16, yardstick=yardstick)
    with pytest.raises(AssertionError, match="answer 4 "):
        assert_matches_reference(with_changed_gradient(kernel, 3, lambda d: 1.03 * d),
                                 reference_fn, args, jnp.bfloat16, yardstick=yardstick)


@pytest.mark.parametrize("length_scale", [False, True])
def test_without_a_norm_the_values_are_as_accurate_as_the_reference(length_scale):
    """A soak run's find: with the logit scale folded into the 16-bit q tile, q was rounded
    where the reference, without a norm, never rounds it. At logits up to 19 (43 with LSSA's
    length scale) the values were 0.024 (0.042) from the float32 reference, against the
    reference's own 0.008. The scores take the scale instead."""
    t, s, d = 45, 82, 64
    keys = jax.random.split(jax.random.key(t), 3)
    q = (2 * jax.random.normal(keys[0], (2, t, 2, d))).astype(jnp.bfloat16)
    k = (2 * jax.random.normal(keys[1], (2, s, 2, d)) + 0.5).astype(jnp.bfloat16)
    v = jax.random.normal(keys[2], (2, s, 2, d)).astype(jnp.bfloat16)
    call = lambda impl: (lambda *arrays: fused_norm_attention(
        *arrays, qk_norm=None, impl=impl, length_scale=length_scale,
        sm_scale=1 / d if length_scale else None))
    truth = call("xla")(*to_float32((q, k, v)))
    assert distance(call(KERNEL_IMPL)(q, k, v), truth) <= 2 * distance(call("xla")(q, k, v), truth)
    assert_matches_reference(call(KERNEL_IMPL), call("xla"), (q, k, v), jnp.bfloat16)


def test_reference_equals_plain_softmax_attention_without_norms():
    keys = jax.random.split(jax.random.key(3), 3)
    q, k, v = (jax.random.normal(kk, (2, 9, 4, 16)) for kk in keys)
    mask = jnp.arange(9)[None, :] < jnp.array([[9], [5]])
    want = softmax_attention(q, k, v, causal=True, key_mask_bs=mask)
    close(fused_norm_attention(q, k, v, key_mask_bs=mask, causal=True, impl="xla"), want, 1e-5)
    got = fused_norm_attention(q, k, v, key_mask_bs=mask, causal=True, impl=KERNEL_IMPL)
    close(got, want, 1e-5)


@pytest.mark.parametrize("normalizer", ["softmax", "softplus"])
def test_rows_with_no_visible_key_are_zero_with_finite_grads(normalizer):
    q = jax.random.normal(jax.random.key(0), (1, 4, 2, 16))
    mask = jnp.zeros((1, 4), bool).at[0, 2].set(True)
    f = lambda q: fused_norm_attention(q, q, q, key_mask_bs=mask, causal=True, qk_norm="rms",
                                       normalizer=normalizer, impl=KERNEL_IMPL).sum()
    out = fused_norm_attention(q, q, q, key_mask_bs=mask, causal=True, normalizer=normalizer,
                               impl=KERNEL_IMPL)
    assert float(jnp.abs(out[0, :2]).max()) == 0.0  # queries 0, 1 see no unmasked key
    assert bool(jnp.isfinite(jax.grad(f)(q)).all())


def test_large_logits_do_not_overflow_in_bf16():
    q = (100 * jax.random.normal(jax.random.key(1), (1, 32, 2, 16))).astype(jnp.bfloat16)
    for normalizer in ("softmax", "softplus"):
        out = fused_norm_attention(q, q, q, normalizer=normalizer, causal=True, impl=KERNEL_IMPL)
        assert bool(jnp.isfinite(out.astype(jnp.float32)).all())


@pytest.mark.parametrize("normalizer,qk_norm,length_scale", [("softmax", "rms", False),
                                                             ("softplus", "layer", True)])
def test_ragged_grouped_causal_masked(normalizer, qk_norm, length_scale):
    check_matches_reference(t=37, extra_keys=7, heads=(4, 2), d=16, qk_norm=qk_norm,
                            normalizer=normalizer, causal=True, masked=True,
                            segmented=not length_scale, length_scale=length_scale,
                            dtype=jnp.float32)


def test_segments_do_not_see_each_other():
    keys = jax.random.split(jax.random.key(4), 3)
    q, k, v = (jax.random.normal(kk, (1, 24, 2, 16)) for kk in keys)
    ids = (jnp.arange(24) >= 10).astype(jnp.int32)[None]  # two packed sequences: 10 + 14
    call = lambda k, v: fused_norm_attention(q, k, v, qk_norm="rms", segment_ids=ids,
                                             impl=KERNEL_IMPL)
    out = call(k, v)
    out_changed = call(k.at[:, 10:].add(1.0), v.at[:, 10:].add(1.0))
    close(out_changed[:, :10], out[:, :10], 1e-6)  # the first sequence never sees the second
    assert float(jnp.abs(out_changed[:, 10:] - out[:, 10:]).max()) > 1e-3
    with pytest.raises(ConfigError, match=r"segment_ids shapes \(1, 23\)"):
        fused_norm_attention(q, k, v, segment_ids=(ids[:, :23], ids), impl="xla")


@pytest.mark.parametrize("causal", [True, False])
def test_length_scaled_softplus_is_lssa(causal):
    """With rms qk-norm, sm_scale = 1/d and the length scale, the kernel computes LSSA (the
    op in jaxlab.ops.softplus_attention, without re-weighting) up to the norms' eps."""
    from jaxlab.ops.softplus_attention import softplus_attention
    keys = jax.random.split(jax.random.key(6), 3)
    q, k, v = (jax.random.normal(kk, (2, 21, 2, 16)) for kk in keys)
    mask = jnp.arange(21)[None, :] < jnp.array([[21], [15]])
    got = fused_norm_attention(q, k, v, key_mask_bs=mask, qk_norm="rms", normalizer="softplus",
                               sm_scale=1 / 16, causal=causal, length_scale=True,
                               impl=KERNEL_IMPL)
    want = softplus_attention(q, k, v, causal=causal, key_mask_bs=mask)
    close(got, want, 1e-4)
    call = lambda impl: (lambda q, k, v: fused_norm_attention(
        q, k, v, key_mask_bs=mask, qk_norm="rms", normalizer="softplus", sm_scale=1 / 16,
        causal=causal, length_scale=True, impl=impl, block_q=16, block_k=16))
    assert_matches_reference(call(KERNEL_IMPL), call("xla"), (q, k, v), jnp.float32)


@pytest.mark.parametrize("t,s,causal,backward_tiles,normalizer", [
    (64, 64, True, None, "softmax"),      # no mask: tiles left of the diagonal go unmasked
    pytest.param(64, 64, True, None, "softplus", marks=pytest.mark.slow),
    (32, 64, True, (32, 16, None, 2), "softmax"),   # keys ahead of queries; own backward blocks
    pytest.param(48, 48, False, (16, 16, None, 3), "softplus",  # no mask at all; padded to
                 marks=pytest.mark.slow),                       # the larger block
    (40, 40, True, (32, 32, None, 2), "softmax"),   # key padding: every tile masked
])
def test_unmasked_tiles_and_backward_tiles(t, s, causal, backward_tiles, normalizer):
    keys = jax.random.split(jax.random.key(t + s), 5)
    q = 2 * jax.random.normal(keys[0], (1, t, 2, 16))
    k = 2 * jax.random.normal(keys[1], (1, s, 1, 16))
    v = jax.random.normal(keys[2], (1, s, 1, 16))
    q_scale, k_scale = (1 + 0.1 * jax.random.normal(kk, (16,)) for kk in keys[3:])
    call = lambda impl: (lambda q, k, v, a, b: fused_norm_attention(
        q, k, v, a, b, qk_norm="rms", normalizer=normalizer, causal=causal, impl=impl,
        block_q=16, block_k=16, backward_tiles=backward_tiles))
    assert_matches_reference(call(KERNEL_IMPL), call("xla"), (q, k, v, q_scale, k_scale),
                             jnp.float32)


def test_backward_blocks_must_nest():
    q = jnp.ones((1, 32, 1, 16))
    with pytest.raises(ConfigError, match="backward block_q 24 and the forward's 16"):
        fused_norm_attention(q, q, q, impl="interpret", block_q=16, block_k=16,
                             backward_tiles=(24, 16, None, 2))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_default_launch_matches_reference(dtype):
    """No launch arguments: on a GPU this runs the measured GPU_TILES (128-row blocks), which
    the small-block tests above do not reach; interpreted, the default blocks of up to 64."""
    keys = jax.random.split(jax.random.key(11), 3)
    q, k, v = (jax.random.normal(kk, (1, 200, 2, 64)).astype(dtype) for kk in keys)
    call = lambda impl: (lambda q, k, v: fused_norm_attention(q, k, v, qk_norm="rms",
                                                              causal=True, impl=impl))
    assert_matches_reference(call(KERNEL_IMPL), call("xla"), (q, k, v), dtype)


def test_gpu_tiles_follow_the_head_dim_and_shrink_to_the_sequence():
    from jaxlab.kernels.norm_attention.api import GPU_TILES, gpu_tiles
    assert gpu_tiles(64, 4096, 4096) == GPU_TILES[64]
    assert gpu_tiles(32, 4096, 4096) == GPU_TILES[64]
    assert gpu_tiles(128, 4096, 4096) == GPU_TILES[128]
    assert gpu_tiles(128, 40, 100) == ((64, 128, 8, 2), (64, 64, 4, 2))
    assert gpu_tiles(256, 4096, 4096)[0][:2] == (64, 64)
