"""The normalization family in jaxlab.ops.norms against numpy formulas and closed-form gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.ops import norms

EPS = 1e-6


def rand(shape, seed=0, loc=0.0, scale=1.0):
    return (loc + scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def test_crms_norm_of_compressed_zero_mean_vector_equals_layer_norm():
    x = rand((3, 4, 17), 0, loc=2.0, scale=3.0)
    centered = x - x.mean(-1, keepdims=True)
    got = norms.crms_norm(centered[..., :-1], eps=EPS)
    np.testing.assert_allclose(got, norms.layer_norm(x, eps=EPS)[..., :-1], rtol=1e-5, atol=1e-5)


def test_crms_norm_matches_formula_and_naive_gradient():
    x, scale = rand((2, 5, 8), 1, loc=0.5), rand((8,), 2)
    ct = rand((2, 5, 8), 3)

    def naive(x, s):
        ms = (jnp.sum(x * x, -1, keepdims=True) + jnp.sum(x, -1, keepdims=True) ** 2) / 9
        return x / jnp.sqrt(ms + EPS) * s

    xs = x.astype(np.float64)
    want = xs / np.sqrt(((xs ** 2).sum(-1, keepdims=True) + xs.sum(-1, keepdims=True) ** 2) / 9
                        + EPS) * scale
    np.testing.assert_allclose(norms.crms_norm(x, scale, EPS), want, rtol=1e-5, atol=1e-5)
    grad = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums=(0, 1))(x, scale)
    for g, w in zip(grad(lambda x, s: norms.crms_norm(x, s, EPS)), grad(naive)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_dynamic_tanh_matches_numpy_and_has_alpha_gradient():
    x, scale, bias = rand((2, 3, 8), 4, scale=3.0), rand((8,), 5), rand((8,), 6)
    alpha = jnp.float32(0.7)
    np.testing.assert_allclose(norms.dynamic_tanh(x, alpha, scale, bias),
                               np.tanh(0.7 * x) * scale + bias, rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda a: norms.dynamic_tanh(x, a).sum())(alpha)
    np.testing.assert_allclose(g, (x * (1 - np.tanh(0.7 * x) ** 2)).sum(), rtol=1e-4)


def test_rep_batch_norm_matches_numpy_and_its_affine_folds_into_dense():
    x = rand((4, 6, 8), 7, loc=1.0, scale=2.0)
    scale, bias, alpha = rand((8,), 8), rand((8,), 9), jnp.float32(0.3)
    mean, var = norms.feature_moments(x)
    np.testing.assert_allclose(mean, x.mean((0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, x.var((0, 1)), rtol=1e-5)
    y = norms.rep_batch_norm(x, mean, var, alpha, scale, bias)
    want = (x - x.mean((0, 1))) / np.sqrt(x.var((0, 1)) + 1e-5) * scale + bias + 0.3 * x
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
    kernel, dense_bias = rand((8, 5), 10), rand((5,), 11)
    a, c = norms.rep_batch_norm_affine(mean, var, alpha, scale, bias)
    folded_kernel, folded_bias = norms.fold_affine_into_dense(a, c, kernel, dense_bias)
    np.testing.assert_allclose(x @ folded_kernel + folded_bias, y @ kernel + dense_bias,
                               rtol=1e-5, atol=1e-5)


def test_prepbn_lambda_schedule():
    lam = lambda t, r0=1.0: float(norms.prepbn_lambda(t, warmup_steps=10, decay_steps=100, r0=r0))
    assert [lam(0), lam(9)] == [1.0, 1.0]
    assert lam(10) == 1.0 and lam(10, r0=0.5) == 0.5
    np.testing.assert_allclose([lam(35), lam(60)], [0.75, 0.5], rtol=1e-6)
    assert lam(110) == 0.0 and lam(10_000) == 0.0


def test_power_norm_uses_running_statistic_and_constant_backward():
    x, psi2 = rand((4, 5, 8), 12, loc=1.0), np.abs(rand((8,), 13)) + 0.5
    scale, bias = rand((8,), 14), rand((8,), 15)
    y = norms.power_norm(x, psi2, scale, bias, eps=1e-5)
    np.testing.assert_allclose(y, x / np.sqrt(psi2 + 1e-5) * scale + bias, rtol=1e-5, atol=1e-6)
    ct = rand(x.shape, 16)
    gx = jax.grad(lambda x: jnp.sum(norms.power_norm(x, psi2, scale, eps=1e-5) * ct))(x)
    np.testing.assert_allclose(gx, ct * scale / np.sqrt(psi2 + 1e-5), rtol=1e-5, atol=1e-6)
    new = norms.updated_mean_square(x, psi2, 0.9)
    np.testing.assert_allclose(new, 0.9 * psi2 + 0.1 * (x ** 2).mean((0, 1)), rtol=1e-5)


def test_power_iteration_converges_to_top_singular_value():
    kernel = rand((24, 16), 17)
    top = np.linalg.svd(kernel.astype(np.float64), compute_uv=False)[0]
    u = jnp.asarray(rand((16,), 18))
    u = norms.power_iteration(kernel, u, steps=200)
    assert abs(float(norms.spectral_norm_estimate(kernel, u)) - top) < 1e-3 * top
    exact = norms.top_right_singular_vector(kernel)
    np.testing.assert_allclose(norms.spectral_norm_estimate(kernel, exact), top, rtol=1e-5)


def test_spectral_norm_gradient_is_outer_product_of_singular_vectors():
    kernel = rand((6, 4), 19)
    left, sv, right_t = np.linalg.svd(kernel.astype(np.float64))
    g = jax.grad(norms.spectral_norm_estimate)(jnp.asarray(kernel), norms.top_right_singular_vector(kernel))
    np.testing.assert_allclose(g, np.outer(left[:, 0], right_t[0]), atol=1e-5)


def test_weight_norm_value_and_salimans_kingma_gradients():
    v, g = rand((5, 3), 20), np.abs(rand((3,), 21)) + 0.5
    w = np.asarray(norms.weight_norm(v, g))
    np.testing.assert_allclose(w, g * v / np.linalg.norm(v, axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), g, rtol=1e-5)
    grad_w = rand((5, 3), 22)  # dL/dw for L = <grad_w, w>
    gv, gg = jax.grad(lambda v, g: jnp.sum(norms.weight_norm(v, g) * grad_w), argnums=(0, 1))(v, g)
    vn = np.linalg.norm(v, axis=0)
    np.testing.assert_allclose(gg, (grad_w * v).sum(0) / vn, rtol=1e-4)
    for j in range(3):
        wj = w[:, j]
        proj = np.eye(5) - np.outer(wj, wj) / (wj @ wj)
        np.testing.assert_allclose(gv[:, j], g[j] / vn[j] * proj @ grad_w[:, j], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn", ["layer", "rms", "crms"])
def test_float64_inputs_stay_float64(fn):
    f = {"layer": norms.layer_norm, "rms": norms.rms_norm, "crms": norms.crms_norm}[fn]
    with jax.enable_x64(True):
        x = np.random.default_rng(23).standard_normal((2, 7)) * 1e3 + 1.0
        y = f(jnp.asarray(x, jnp.float64), eps=0.0)
        assert y.dtype == jnp.float64
        if fn == "layer":
            c = x - x.mean(-1, keepdims=True)
            np.testing.assert_allclose(y, c / np.sqrt((c ** 2).mean(-1, keepdims=True)), rtol=1e-12)
