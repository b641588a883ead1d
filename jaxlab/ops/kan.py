"""Kolmogorov-Arnold layers: bases, the matmul formulation, grid refits, regularizers, rationals.

A KAN layer puts a learned univariate function on every edge: y_o = Σ_i φ_oi(x_i), with
φ_oi(x) = w_base[o,i]·b(x) + s[o,i]·Σ_n c[o,i,n]·B_n(x). Evaluating all bases once per input,
B: [batch, in, n], turns the sum over edges into one contraction with c (efficient-kan's
formulation) instead of a [batch, out, in] tensor of edge values.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------- bases


def uniform_grid(grid_size: int, order: int, lo: float, hi: float, num_inputs: int) -> jax.Array:
    """Knots [in, G + 2k + 1]: G uniform intervals over [lo, hi], extended by k on each side."""
    step = (hi - lo) / grid_size
    knots = lo + step * jnp.arange(-order, grid_size + order + 1, dtype=jnp.float32)
    return jnp.broadcast_to(knots, (num_inputs, knots.shape[0]))


def bspline_basis(x_bi: jax.Array, grid_ik: jax.Array, order: int) -> jax.Array:
    """B-spline bases [b, in, G + k] of order k on each input's knots (Cox–de Boor recursion).

    They are non-negative and sum to 1 for x inside the un-extended grid range.
    """
    x = x_bi[..., None]
    grid = grid_ik[None]
    bases = ((x >= grid[..., :-1]) & (x < grid[..., 1:])).astype(x_bi.dtype)
    for k in range(1, order + 1):
        left = (x - grid[..., :-(k + 1)]) / (grid[..., k:-1] - grid[..., :-(k + 1)])
        right = (grid[..., k + 1:] - x) / (grid[..., k + 1:] - grid[..., 1:-k])
        bases = left * bases[..., :-1] + right * bases[..., 1:]
    return bases


def rbf_basis(x_bi: jax.Array, centers_n: jax.Array, width: float) -> jax.Array:
    """Gaussian bumps exp(−((x − c_n)/h)²) [b, in, n] (FastKAN)."""
    return jnp.exp(-jnp.square((x_bi[..., None] - centers_n) / width))


def chebyshev_basis(x_bi: jax.Array, degree: int) -> jax.Array:
    """T_0..T_degree of tanh(x) [b, in, degree + 1]; tanh keeps the argument inside [−1, 1]."""
    t = jnp.tanh(x_bi)
    polys = [jnp.ones_like(t), t]
    for _ in range(2, degree + 1):
        polys.append(2 * t * polys[-1] - polys[-2])
    return jnp.stack(polys[:degree + 1], axis=-1)


def fourier_basis(x_bi: jax.Array, num_frequencies: int) -> jax.Array:
    """[cos(k x), sin(k x)] for k = 1..K, [b, in, 2K]."""
    kx = x_bi[..., None] * jnp.arange(1, num_frequencies + 1, dtype=x_bi.dtype)
    return jnp.concatenate([jnp.cos(kx), jnp.sin(kx)], axis=-1)


# ------------------------------------------------------------------------------------ the layer


def kan_linear(x_bi: jax.Array, basis_bin: jax.Array, coef_oin: jax.Array,
               base_weight_oi: jax.Array | None = None,
               base_activation: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """y [b, out] = Σ_i (w_base[o,i]·b(x_i) + Σ_n c[o,i,n]·B_n(x_i)); scalers folded into c."""
    y = jnp.einsum("bin,oin->bo", basis_bin, coef_oin)
    if base_weight_oi is not None:
        y = y + base_activation(x_bi) @ base_weight_oi.T
    return y


def edge_values(x_bi: jax.Array, basis_bin: jax.Array, coef_oin: jax.Array,
                base_weight_oi: jax.Array | None = None,
                base_activation: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """Every edge's φ_oi(x_i) [b, out, in] (the naive form; for regularizers and plots)."""
    phi = jnp.einsum("bin,oin->boi", basis_bin, coef_oin)
    if base_weight_oi is not None:
        phi = phi + base_activation(x_bi)[:, None, :] * base_weight_oi[None]
    return phi


def refit_coefficients(basis_bin: jax.Array, values_boi: jax.Array, ridge: float = 1e-8) -> jax.Array:
    """Least-squares c [out, in, n] with Σ_n c[o,i,n] B_n(x_bi) ≈ values[b, o, i], per input i."""
    gram_inn = jnp.einsum("bin,bim->inm", basis_bin, basis_bin)
    rhs_ino = jnp.einsum("bin,boi->ino", basis_bin, values_boi)
    # A tiny ridge keeps bases with no samples (grid cells outside the data) at zero.
    scale = jnp.trace(gram_inn, axis1=1, axis2=2)[:, None, None] / gram_inn.shape[-1]
    eye = jnp.eye(gram_inn.shape[-1], dtype=gram_inn.dtype)
    coef_ino = jnp.linalg.solve(gram_inn + ridge * scale * eye, rhs_ino)
    return coef_ino.transpose(2, 0, 1)


def adaptive_grid(x_bi: jax.Array, grid_size: int, order: int, grid_eps: float,
                  margin: float = 0.01) -> jax.Array:
    """Knots [in, G + 2k + 1] fitted to samples: a mix (weight grid_eps on uniform) of the
    sample quantiles and a uniform grid over [min − margin, max + margin], extended by k
    uniform steps on each side."""
    x_sorted = jnp.sort(x_bi, axis=0)
    picks = jnp.linspace(0, x_bi.shape[0] - 1, grid_size + 1).round().astype(jnp.int32)
    quantiles = x_sorted[picks].T
    lo, hi = x_sorted[0] - margin, x_sorted[-1] + margin
    step = (hi - lo) / grid_size
    uniform = lo[:, None] + step[:, None] * jnp.arange(grid_size + 1, dtype=x_bi.dtype)
    grid = grid_eps * uniform + (1 - grid_eps) * quantiles
    # The quantile ends sit on the data; the margin keeps the extreme samples strictly inside.
    grid = grid.at[:, 0].set(lo).at[:, -1].set(hi)
    below = grid[:, :1] - step[:, None] * jnp.arange(order, 0, -1, dtype=x_bi.dtype)
    above = grid[:, -1:] + step[:, None] * jnp.arange(1, order + 1, dtype=x_bi.dtype)
    return jnp.concatenate([below, grid, above], axis=1)


# ---------------------------------------------------------------------------------- regularizers


def l1_and_entropy(edge_scale_oi: jax.Array, *, l1: float = 1.0, entropy: float = 2.0,
                   eps: float = 1e-12) -> jax.Array:
    """pykan's sparsity loss from per-edge magnitudes |φ_oi| (mean over a batch):
    l1·Σ|φ| + entropy·(H over each output's incoming edges + H over each input's outgoing ones)."""
    total = jnp.sum(edge_scale_oi)
    p_rows = edge_scale_oi / (jnp.sum(edge_scale_oi, axis=1, keepdims=True) + eps)
    p_cols = edge_scale_oi / (jnp.sum(edge_scale_oi, axis=0, keepdims=True) + eps)
    ent = -jnp.sum(p_rows * jnp.log(p_rows + eps)) - jnp.sum(p_cols * jnp.log(p_cols + eps))
    return l1 * total + entropy * ent


# ---------------------------------------------------------------------- group-rational (GR-KAN)

NUM_DEGREE, DEN_DEGREE = 5, 4


def rational(x_bd: jax.Array, numerator_p: jax.Array, denominator_gq: jax.Array) -> jax.Array:
    """P(x)/Q(x) per channel group: P(x) = Σ_{i=0..5} a_i x^i (shared by all groups),
    Q(x) = 1 + Σ_{i=1..4} |b_{g,i}|·|x|^i (one per group, so Q ≥ 1: no poles).

    The channels [..., d] split into G contiguous groups of d/G.
    """
    groups = denominator_gq.shape[0]
    d = x_bd.shape[-1]
    xg = x_bd.reshape(x_bd.shape[:-1] + (groups, d // groups))
    a = numerator_p.astype(x_bd.dtype)
    b = jnp.abs(denominator_gq).astype(x_bd.dtype)[:, None, :]  # [G, 1, 4] against [..., G, c]
    # Horner's rule: no x ** array powers, whose gradient is NaN at x = 0 (0 · 0⁻¹).
    p = a[NUM_DEGREE] * jnp.ones_like(xg)
    for i in range(NUM_DEGREE - 1, -1, -1):
        p = p * xg + a[i]
    ax = jnp.abs(xg)
    q = b[..., DEN_DEGREE - 1] * ax
    for i in range(DEN_DEGREE - 2, -1, -1):
        q = (q + b[..., i]) * ax
    return (p / (1.0 + q)).reshape(x_bd.shape)


def _rational_1(x, coefs):
    return rational(x[:, None], coefs[:NUM_DEGREE + 1], coefs[None, NUM_DEGREE + 1:])[:, 0]


def _levenberg_marquardt(residual, coefs, iterations: int):
    damping = 1e-3
    loss = jnp.sum(residual(coefs) ** 2)
    jacobian = jax.jit(jax.jacfwd(residual))
    residual = jax.jit(residual)
    for _ in range(iterations):
        jac, r = jacobian(coefs), residual(coefs)
        step = jnp.linalg.solve(jac.T @ jac + damping * jnp.eye(len(coefs)), -jac.T @ r)
        new_loss = jnp.sum(residual(coefs + step) ** 2)
        if new_loss < loss:
            coefs, loss, damping = coefs + step, new_loss, damping / 3
        else:
            damping *= 4
    return coefs


@functools.lru_cache(maxsize=8)
def fit_rational(target: str, lo: float = -3.0, hi: float = 3.0, iterations: int = 60) -> tuple:
    """Coefficients (a_0..a_5, b_1..b_4) of `rational` fitted to identity, silu, gelu or relu on
    [lo, hi] with the very formula the forward uses, so the init is what it claims to be
    (KAT's GELU init was fitted with another denominator than its kernel evaluates)."""
    fns = {"identity": lambda x: x, "gelu": jax.nn.gelu, "silu": jax.nn.silu, "relu": jax.nn.relu}
    if target not in fns:
        raise ValueError(f"no rational init for {target!r}; known: {', '.join(sorted(fns))}")
    if target == "identity":
        return (0.0, 1.0) + (0.0,) * (NUM_DEGREE - 1 + DEN_DEGREE)
    x = np.linspace(lo, hi, 1201)
    y = np.asarray(fns[target](x))
    if target == "gelu":
        # gelu(x) ≈ silu(1.702 x): start from the silu fit with its argument rescaled.
        silu = np.asarray(fit_rational("silu", lo * 1.702, hi * 1.702, iterations))
        start = np.concatenate([silu[:NUM_DEGREE + 1] * 1.702 ** np.arange(NUM_DEGREE + 1),
                                silu[NUM_DEGREE + 1:] * 1.702 ** np.arange(1, DEN_DEGREE + 1)])
    else:
        # Linearised least squares P(x) − y·Σ b_i|x|^i ≈ y.
        lhs = np.concatenate([x[:, None] ** np.arange(NUM_DEGREE + 1),
                              -y[:, None] * np.abs(x)[:, None] ** np.arange(1, DEN_DEGREE + 1)], 1)
        start = np.linalg.lstsq(lhs, y, rcond=None)[0]
    with jax.enable_x64(True):
        xs, ys = jnp.asarray(x), jnp.asarray(y)
        coefs, weights = jnp.asarray(start), jnp.ones_like(xs)
        # Least squares, then Lawson reweighting towards the smallest maximum error.
        for _ in range(4):
            coefs = _levenberg_marquardt(
                lambda c, w=weights: jnp.sqrt(w) * (_rational_1(xs, c) - ys), coefs, iterations)
            error = jnp.abs(_rational_1(xs, coefs) - ys)
            weights = weights * error / jnp.mean(weights * error)
        return tuple(float(c) for c in coefs)


# fit_rational's results (they take seconds to compute); tests check each against its target.
RATIONAL_INIT = {
    "identity": (0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    "gelu": (0.0011621359052566603, 0.5059645267482206, 0.40166678366308245, 0.118209101619499,
             0.02325032984271144, 0.0034119203198274455,
             0.06080992170210455, 0.15194298420266728, 0.04219084785930249, -3.446150193444811e-11),
    "silu": (4.121019657144787e-07, 0.5000008930837412, 0.24999720701963463, 0.0532483552610924,
             0.005794669247645148, 0.00027407487578872666,
             4.4889143226941795e-06, 0.10649296265799628, 1.2689113077514216e-06,
             0.0005479999776617331),
}

# 1 / E[f(z)²] for z ~ N(0, 1): the gain² that keeps a Dense after f variance-preserving.
SECOND_MOMENT_GAIN_SQ = {"identity": 1.0, "gelu": 2.3568, "silu": 2.8178, "relu": 2.0}


# --------------------------------------------------------------------------------- PolyCom


def poly_relu(x: jax.Array, coef_r: jax.Array, bias: jax.Array) -> jax.Array:
    """Σ_{i=1..r} a_i·relu(x)^i + a_0 (PolyReLU, Zhuo et al. 2024)."""
    r = jax.nn.relu(x)
    out, power = bias.astype(x.dtype), jnp.ones_like(x)
    for i in range(coef_r.shape[0]):
        power = power * r  # repeated products: x ** array has a NaN gradient at 0
        out = out + coef_r[i].astype(x.dtype) * power
    return out


def poly_norm(x: jax.Array, coef_r: jax.Array, bias: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Σ_{i=1..r} a_i·rmsnorm(x^i) + a_0 over the last axis (PolyNorm): each power is rescaled
    to unit RMS so high orders cannot blow up."""
    out, p_raw = bias.astype(x.dtype), jnp.ones_like(x)
    for i in range(1, coef_r.shape[0] + 1):
        p_raw = p_raw * x
        p = p_raw * jax.lax.rsqrt(jnp.mean(jnp.square(p_raw), axis=-1, keepdims=True) + eps)
        out = out + coef_r[i - 1].astype(x.dtype) * p
    return out


def num_bspline_bases(grid_size: int, order: int) -> int:
    """B-splines of degree `order` on `grid_size` intervals: grid_size + order of them."""
    return grid_size + order


def default_rbf_width(lo: float, hi: float, num_centers: int) -> float:
    """The Gaussian RBF width: the spacing of `num_centers` centres evenly over [lo, hi]."""
    return (hi - lo) / max(num_centers - 1, 1)

