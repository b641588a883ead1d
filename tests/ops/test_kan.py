"""jaxlab.ops.kan against scipy, closed forms and naive per-edge loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.interpolate import BSpline

from jaxlab.ops import kan


def test_bspline_bases_match_scipy_and_sum_to_one_inside_the_grid():
    grid = kan.uniform_grid(5, 3, -1.0, 1.0, 2)
    x = jnp.asarray(np.random.default_rng(0).uniform(-0.999, 0.999, size=(300, 2)), jnp.float32)
    bases = np.asarray(kan.bspline_basis(x, grid, 3))
    assert bases.shape == (300, 2, 8) and np.all(bases >= 0)
    np.testing.assert_allclose(bases.sum(-1), 1.0, atol=1e-5)
    knots = np.asarray(grid[0], np.float64)
    for n in range(8):
        ref = BSpline.basis_element(knots[n:n + 5], extrapolate=False)(np.asarray(x[:, 0], np.float64))
        np.testing.assert_allclose(bases[:, 0, n], np.nan_to_num(ref), atol=1e-5)


def test_chebyshev_recurrence_equals_the_cosine_form():
    x = jnp.linspace(-3, 3, 101)[:, None]
    t = np.tanh(np.asarray(x, np.float64))
    expected = np.cos(np.arange(7) * np.arccos(t)[..., None])
    np.testing.assert_allclose(kan.chebyshev_basis(x, 6), expected, atol=1e-5)


def test_rbf_and_fourier_bases():
    x = jnp.asarray([[0.3, -1.0]])
    np.testing.assert_allclose(kan.rbf_basis(x, jnp.array([0.0, 0.5]), 0.5)[0, 0],
                               np.exp(-np.square((0.3 - np.array([0.0, 0.5])) / 0.5)), rtol=1e-6)
    np.testing.assert_allclose(kan.fourier_basis(x, 2)[0, 1],
                               [np.cos(-1), np.cos(-2), np.sin(-1), np.sin(-2)], rtol=1e-6)


def naive_kan(x, bases, coef, base_weight):
    """Loop over every edge: y_o = Σ_i w[o,i]·silu(x_i) + Σ_n c[o,i,n]·B_n(x_i)."""
    b, i_dim, _ = bases.shape
    out = np.zeros((b, coef.shape[0]))
    for o in range(coef.shape[0]):
        for i in range(i_dim):
            silu = x[:, i] / (1 + np.exp(-x[:, i]))
            out[:, o] += base_weight[o, i] * silu + bases[:, i] @ coef[o, i]
    return out


def test_matmul_form_equals_the_per_edge_sum_with_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.uniform(-1, 1, size=(16, 3)), jnp.float32)
    grid = kan.uniform_grid(4, 3, -1.0, 1.0, 3)
    coef = jnp.asarray(rng.normal(size=(5, 3, 7)), jnp.float32)
    base_weight = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
    bases = kan.bspline_basis(x, grid, 3)
    y = kan.kan_linear(x, bases, coef, base_weight, jax.nn.silu)
    np.testing.assert_allclose(y, naive_kan(*map(np.asarray, (x, bases, coef, base_weight))), atol=1e-5)
    np.testing.assert_allclose(y, kan.edge_values(x, bases, coef, base_weight, jax.nn.silu).sum(-1),
                               atol=1e-5)

    def loss(x, coef, w):
        return jnp.sum(jnp.sin(kan.kan_linear(x, kan.bspline_basis(x, grid, 3), coef, w, jax.nn.silu)))

    def naive_loss(x, coef, w):
        bases = kan.bspline_basis(x, grid, 3)
        phi = jnp.stack([jnp.stack([w[o, i] * jax.nn.silu(x[:, i]) + bases[:, i] @ coef[o, i]
                                    for i in range(3)], -1).sum(-1) for o in range(5)], -1)
        return jnp.sum(jnp.sin(phi))

    for a, b in zip(jax.jit(jax.grad(loss, (0, 1, 2)))(x, coef, base_weight),
                    jax.jit(jax.grad(naive_loss, (0, 1, 2)))(x, coef, base_weight)):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_refit_reproduces_a_function_in_the_span():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.uniform(-1, 1, size=(400, 2)), jnp.float32)
    grid = kan.uniform_grid(6, 3, -1.0, 1.0, 2)
    bases = kan.bspline_basis(x, grid, 3)
    coef = jnp.asarray(rng.normal(size=(3, 2, 9)), jnp.float32)
    values = jnp.einsum("bin,oin->boi", bases, coef)
    np.testing.assert_allclose(kan.refit_coefficients(bases, values), coef, atol=2e-3)


def test_adaptive_grid_follows_the_samples():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1000, 1)) * 0.3, jnp.float32)
    grid = np.asarray(kan.adaptive_grid(x, 4, 3, grid_eps=0.0))[0]
    assert grid.shape == (4 + 7,) and np.all(np.diff(grid) > 0)
    interior = grid[3:-3]
    assert interior[0] < float(x.min()) and interior[-1] > float(x.max())
    np.testing.assert_allclose(interior[2], np.median(np.asarray(x)), atol=0.02)


def test_l1_and_entropy_regularizer():
    scale = jnp.array([[1.0, 0.0], [0.5, 0.5]])
    reg = kan.l1_and_entropy(scale, l1=1.0, entropy=0.0)
    np.testing.assert_allclose(reg, 2.0, rtol=1e-6)
    # Entropy: row 0 is one-hot (0), row 1 uniform (log 2); columns: (2/3,1/3) and (0,1).
    ent = kan.l1_and_entropy(scale, l1=0.0, entropy=1.0)
    col0 = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3))
    np.testing.assert_allclose(ent, np.log(2) + col0, rtol=1e-5)
    grad = jax.grad(lambda s: kan.l1_and_entropy(s))(scale + 0.1)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name,fn,tol", [("identity", lambda x: x, 1e-6),
                                         ("gelu", jax.nn.gelu, 1e-2), ("silu", jax.nn.silu, 1e-3)])
def test_rational_init_matches_its_target_on_minus_3_to_3(name, fn, tol):
    coefs = jnp.asarray(kan.RATIONAL_INIT[name], jnp.float32)
    x = jnp.linspace(-3, 3, 2001)
    y = kan.rational(x[:, None].repeat(8, 1), coefs[:6], jnp.tile(coefs[6:], (8, 1)))
    assert np.max(np.abs(np.asarray(y) - np.asarray(fn(x))[:, None])) < tol


def test_rational_denominator_is_at_least_one_and_groups_are_separate():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(64, 8)) * 5, jnp.float32)
    den = jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)  # negative entries too
    inverse_q = kan.rational(x, jnp.array([1.0, 0, 0, 0, 0, 0]), den)  # 1 / Q(x)
    assert np.all(np.asarray(inverse_q) > 0) and np.all(np.asarray(inverse_q) <= 1.0)
    # Channel c uses group c // 2: Q_g(x) = 1 + Σ |b_gi| |x|^i.
    expected_q = 1 + sum(np.abs(np.asarray(den))[np.arange(8) // 2, i - 1] * np.abs(np.asarray(x)) ** i
                         for i in range(1, 5))
    np.testing.assert_allclose(inverse_q, 1 / expected_q, rtol=1e-5)


def test_poly_relu_and_poly_norm_against_the_formulas():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 6)), jnp.float32)
    coef, bias = jnp.array([0.5, -0.2, 0.1]), jnp.array(0.3)
    r = np.maximum(np.asarray(x), 0)
    np.testing.assert_allclose(kan.poly_relu(x, coef, bias), 0.5 * r - 0.2 * r ** 2 + 0.1 * r ** 3 + 0.3,
                               rtol=1e-5, atol=1e-6)
    xn = np.asarray(x, np.float64)
    rms = lambda p: p / np.sqrt(np.mean(p ** 2, -1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(kan.poly_norm(x, coef, bias),
                               0.5 * rms(xn) - 0.2 * rms(xn ** 2) + 0.1 * rms(xn ** 3) + 0.3, rtol=1e-4)
    g = jax.grad(lambda c: kan.poly_norm(x, c, bias).sum())(coef)
    np.testing.assert_allclose(g, [rms(xn ** i).sum() for i in (1, 2, 3)], rtol=1e-4)


def test_gradients_are_finite_at_zero():
    x = jnp.zeros((2, 8))
    coefs = jnp.asarray(kan.RATIONAL_INIT["gelu"], jnp.float32)
    grads = jax.grad(lambda x, a, b: kan.rational(x, a, b).sum(), (0, 1, 2))(
        x, coefs[:6], jnp.tile(coefs[6:], (4, 1)))
    assert all(np.all(np.isfinite(g)) for g in grads)
    # d/dx P/(1 + Q) at 0 is a_1 − a_0·Q'(0), and JAX takes d|x|/dx = 1 at 0, so Q'(0) = |b_1|.
    np.testing.assert_allclose(grads[0], coefs[1] - coefs[0] * abs(coefs[6]), rtol=1e-5)
    for fn in (kan.poly_relu, kan.poly_norm):
        g = jax.grad(lambda x: fn(x, jnp.array([0.3, 0.3, 0.3]), jnp.array(0.0)).sum())(x)
        assert np.all(np.isfinite(g))


@pytest.mark.slow
def test_fit_rational_reproduces_the_stored_inits():
    for name in ("gelu", "silu"):
        np.testing.assert_allclose(kan.fit_rational(name), kan.RATIONAL_INIT[name], atol=1e-3)
