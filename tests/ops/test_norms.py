"""layer_norm and rms_norm against numpy formulas and a naive jnp reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.ops.norms import layer_norm, rms_norm

EPS = 1e-6


def inputs(seed=0, shape=(2, 5, 16)):
    rng = np.random.default_rng(seed)
    x = (3.0 * rng.standard_normal(shape) + 1.5).astype(np.float32)
    scale = rng.standard_normal(shape[-1]).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32)
    return x, scale, bias


def numpy_layer_norm(x, scale, bias):
    x = x.astype(np.float64)
    centered = x - x.mean(-1, keepdims=True)
    return centered / np.sqrt((centered ** 2).mean(-1, keepdims=True) + EPS) * scale + bias


def numpy_rms_norm(x, scale):
    x = x.astype(np.float64)
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + EPS) * scale


def jnp_layer_norm(x, scale, bias):
    mean = jnp.sum(x, -1, keepdims=True) / x.shape[-1]
    var = jnp.sum((x - mean) ** 2, -1, keepdims=True) / x.shape[-1]
    return (x - mean) / jnp.sqrt(var + EPS) * scale + bias


def jnp_rms_norm(x, scale):
    return x / jnp.sqrt(jnp.sum(x * x, -1, keepdims=True) / x.shape[-1] + EPS) * scale


def test_layer_norm_matches_numpy():
    x, scale, bias = inputs()
    np.testing.assert_allclose(layer_norm(x, scale, bias, EPS), numpy_layer_norm(x, scale, bias),
                               rtol=1e-5, atol=1e-5)


def test_rms_norm_matches_numpy():
    x, scale, _ = inputs()
    np.testing.assert_allclose(rms_norm(x, scale, EPS), numpy_rms_norm(x, scale), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_bfloat16_in_gives_bfloat16_out(norm):
    x, scale, bias = inputs(1)
    fn = (lambda x: layer_norm(x, scale, bias)) if norm == "layer" else (lambda x: rms_norm(x, scale))
    half = fn(jnp.asarray(x, jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    assert fn(x).dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(half, np.float32), fn(x), rtol=3e-2, atol=3e-2)


def test_layer_norm_grads_match_naive_reference():
    x, scale, bias = inputs(2)
    cotangent = np.random.default_rng(3).standard_normal(x.shape).astype(np.float32)
    grad = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=(0, 1, 2)))
    got = grad(lambda x, s, b: layer_norm(x, s, b, EPS))(x, scale, bias)
    want = grad(jnp_layer_norm)(x, scale, bias)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_rms_norm_grads_match_naive_reference():
    x, scale, _ = inputs(4)
    cotangent = np.random.default_rng(5).standard_normal(x.shape).astype(np.float32)
    grad = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cotangent), argnums=(0, 1)))
    got = grad(lambda x, s: rms_norm(x, s, EPS))(x, scale)
    want = grad(jnp_rms_norm)(x, scale)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_layer_norm_without_affine_has_zero_mean_unit_variance():
    x, _, _ = inputs(6)
    y = np.asarray(layer_norm(x), np.float64)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-4)


def test_rms_norm_without_scale_has_unit_rms():
    x, _, _ = inputs(7)
    y = np.asarray(rms_norm(x), np.float64)
    np.testing.assert_allclose(np.sqrt((y ** 2).mean(-1)), 1.0, rtol=1e-4)


def test_eps_keeps_constant_rows_finite():
    constant = np.full((2, 16), 4.0, np.float32)
    np.testing.assert_array_equal(layer_norm(constant), 0.0)
    np.testing.assert_array_equal(rms_norm(np.zeros_like(constant)), 0.0)
    tiny = np.full((1, 16), 1e-4, np.float32)  # mean square 1e-8 is far below eps = 1e-6
    np.testing.assert_allclose(rms_norm(tiny, eps=EPS), tiny / np.sqrt(1e-8 + EPS), rtol=1e-4)
