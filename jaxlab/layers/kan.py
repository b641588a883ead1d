"""KAN layers: KANLinear (bspline, rbf, chebyshev, fourier bases), group-rational activations,
and the FFN kinds `kan`, `grkan` (KAT), `polyrelu` and `polynorm` (PolyCom).

KANLinear parameters: coef [out, in, n] (one univariate function per edge in the chosen
basis), base_weight [out, in] for the residual activation branch, spline_scaler [out, in].
Count: out·in·(n + 2), with n = G + k (bspline), G (rbf), G + 1 (chebyshev degree G),
2G (fourier, G frequencies). The bspline grid is state (nnx.Variable), refitted by
`update_grid(x)` and refined by `extend_grid(G', x)`, both least-squares refits that keep
the layer's function on the samples. `prune_edges(x, threshold)` switches edges off through a
state mask (pykan's edge pruning); KANRegressor.prune_nodes removes dead hidden nodes;
`plot_edge_functions` draws every edge's learned function (matplotlib).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.common import dense, param
from jaxlab.layers.ffn import activation, hidden_width
from jaxlab.ops import kan as kan_ops
from jaxlab.ops.norms import layer_norm
from jaxlab.registry import FFN

BASES = ("bspline", "rbf", "chebyshev", "fourier")


class KANGrid(nnx.Variable):
    """Knots of a bspline KANLinear: state, not a trained parameter."""


class KANEdgeMask(nnx.Variable):
    """1 for live edges, 0 for pruned ones: state, so training cannot revive a pruned edge."""


class KANLinear(nnx.Module):
    """y = Σ_i φ_oi(x_i) over the last axis, φ_oi = base_weight·b(x) + scaler·Σ_n coef·B_n(x)."""

    def __init__(self, in_features: int, out_features: int, *, basis: str = "bspline",
                 grid_size: int = 5, order: int = 3, grid_range: tuple[float, float] = (-1.0, 1.0),
                 base_activation: str | None = "silu", scale_noise: float = 0.1,
                 scale_base: float = 1.0, scale_spline: float = 1.0,
                 standalone_spline_scaler: bool = True, grid_eps: float = 0.02,
                 use_layernorm: bool = False, axes: tuple[str | None, str | None] = (None, None),
                 rngs: nnx.Rngs):
        if basis not in BASES:
            raise ConfigError(f"unknown KAN basis {basis!r}; known: {', '.join(BASES)}")
        self.basis, self.grid_size, self.order = basis, grid_size, order
        self.grid_range = tuple(float(v) for v in grid_range)
        self.grid_eps, self.in_features, self.out_features = grid_eps, in_features, out_features
        self.axes = tuple(axes)
        self.grid = (KANGrid(kan_ops.uniform_grid(grid_size, order, *self.grid_range, in_features))
                     if basis == "bspline" else None)
        n = self.num_bases()
        noise = nnx.initializers.normal(scale_noise / math.sqrt(n))
        self.coef = param(rngs, noise, (out_features, in_features, n), (axes[1], axes[0], None))
        fan_in = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=1, out_axis=0)
        scaled = lambda s: (lambda key, shape, dtype: s * fan_in(key, shape, dtype))
        self.base_activation = base_activation
        self.base_weight = (param(rngs, scaled(scale_base), (out_features, in_features), (axes[1], axes[0]))
                            if base_activation else None)
        self.spline_scaler = (param(rngs, scaled(scale_spline), (out_features, in_features),
                                    (axes[1], axes[0])) if standalone_spline_scaler else None)
        self.use_layernorm = use_layernorm
        self.edge_mask = KANEdgeMask(jnp.ones((out_features, in_features), jnp.float32))

    def num_bases(self, grid_size: int | None = None) -> int:
        g = self.grid_size if grid_size is None else grid_size
        return {"bspline": g + self.order, "rbf": g, "chebyshev": g + 1, "fourier": 2 * g}[self.basis]

    def bases(self, x_bi: jax.Array, grid_size: int | None = None, grid=None) -> jax.Array:
        g = self.grid_size if grid_size is None else grid_size
        if grid is None and self.grid is not None:
            grid = self.grid[...]
        return _bases(x_bi, grid, basis=self.basis, grid_size=g, order=self.order,
                      grid_range=self.grid_range, use_layernorm=self.use_layernorm)

    def scaled_coef(self) -> jax.Array:
        coef = self.coef[...] * self.edge_mask[...][..., None]
        return coef if self.spline_scaler is None else coef * self.spline_scaler[...][..., None]

    def _base(self):
        return None if self.base_weight is None else self.base_weight[...] * self.edge_mask[...]

    def edge_scores(self, x: jax.Array) -> jax.Array:
        """Mean |φ_oi(x_i)| over the samples x, [out, in]: how much each edge contributes."""
        return jnp.mean(jnp.abs(self.edge_values(x)), axis=0)

    def prune_edges(self, x: jax.Array, threshold: float = 3e-2) -> int:
        """Switch off the edges whose score on x is below `threshold`; returns how many are off."""
        self.edge_mask[...] = self.edge_mask[...] * (self.edge_scores(x) >= threshold)
        return int(jnp.sum(self.edge_mask[...] == 0))

    def keep(self, *, inputs=None, outputs=None) -> None:
        """Keep only the given input and/or output indices (node pruning), in place."""
        inputs = jnp.arange(self.in_features) if inputs is None else jnp.asarray(inputs)
        outputs = jnp.arange(self.out_features) if outputs is None else jnp.asarray(outputs)
        edge_axes = (self.axes[1], self.axes[0])
        self.coef = nnx.Param(self.coef[...][outputs][:, inputs], axes=edge_axes + (None,))
        for name in ("base_weight", "spline_scaler"):
            if getattr(self, name) is not None:
                setattr(self, name, nnx.Param(getattr(self, name)[...][outputs][:, inputs],
                                              axes=edge_axes))
        self.edge_mask = KANEdgeMask(self.edge_mask[...][outputs][:, inputs])
        if self.grid is not None:
            self.grid = KANGrid(self.grid[...][inputs])
        self.in_features, self.out_features = int(inputs.shape[0]), int(outputs.shape[0])

    def __call__(self, x: jax.Array) -> jax.Array:
        x_bi = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
        y = kan_ops.kan_linear(x_bi, self.bases(x_bi), self.scaled_coef(), self._base(),
                               self.base_act())
        return y.reshape(x.shape[:-1] + (self.out_features,)).astype(x.dtype)

    def base_act(self):
        return activation(self.base_activation) if self.base_activation else None

    def edge_values(self, x: jax.Array) -> jax.Array:
        """φ_oi(x_i) for every edge, [b, out, in]."""
        x_bi = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
        return kan_ops.edge_values(x_bi, self.bases(x_bi), self.scaled_coef(), self._base(),
                                   self.base_act())

    def regularization(self, x: jax.Array, *, l1: float = 1.0, entropy: float = 2.0) -> jax.Array:
        """pykan's L1 + entropy penalty on the mean |φ_oi| over the batch x."""
        return kan_ops.l1_and_entropy(jnp.mean(jnp.abs(self.edge_values(x)), axis=0), l1=l1,
                                      entropy=entropy)

    def _refit(self, x_bi: jax.Array, new_bases_bin: jax.Array) -> jax.Array:
        """Unscaled coefficients in the new bases matching the current spline part on x."""
        old_spline_boi = jnp.einsum("bin,oin->boi", self.bases(x_bi), self.coef[...])
        return _refit_coefficients(new_bases_bin, old_spline_boi)

    def update_grid(self, x: jax.Array, margin: float = 0.01) -> None:
        """Move the knots to the samples x [..., in] (grid_eps mix of quantile and uniform) and
        refit the coefficients so the layer's outputs on x stay (nearly) the same."""
        if self.basis != "bspline":
            raise ConfigError(f"update_grid needs the bspline basis, this layer uses {self.basis!r}")
        x_bi = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
        grid = _adaptive_grid(x_bi, self.grid_size, self.order, self.grid_eps, margin)
        coef = self._refit(x_bi, kan_ops.bspline_basis(x_bi, grid, self.order))
        self.grid[...] = grid
        self.coef[...] = coef

    def extend_grid(self, new_grid_size: int, x: jax.Array | None = None) -> None:
        """Refine to `new_grid_size` (G' intervals, centers, degree or frequencies) keeping the
        function: a least-squares refit on x, or on a dense sweep of the grid range. Only the
        grid range is kept: a B-spline is also non-zero up to `order` intervals past it, and
        the finer grid covers less of that margin, so inputs outside the range change. Call
        update_grid(x) first (the grid then covers the data), or pass the data as x."""
        if x is None:
            lo, hi = self._range()
            x = jnp.linspace(lo, hi, 8 * self.num_bases(new_grid_size) + 1)  # [n, in]
        x_bi = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
        grid = None
        if self.basis == "bspline":
            lo, hi = self._range()
            step = (hi - lo) / new_grid_size
            grid = lo[:, None] + step[:, None] * jnp.arange(-self.order, new_grid_size + self.order + 1)
        coef = self._refit(x_bi, self.bases(x_bi, new_grid_size, grid))
        self.grid_size = new_grid_size
        if grid is not None:
            self.grid = KANGrid(grid)
        self.coef = nnx.Param(coef, axes=(self.axes[1], self.axes[0], None))

    def _range(self):
        """Per-input (lo, hi) of the region the bases cover."""
        if self.grid is not None:
            g = self.grid[...]
            return g[:, self.order], g[:, -self.order - 1]
        lo, hi = self.grid_range
        return (jnp.full((self.in_features,), lo), jnp.full((self.in_features,), hi))


# Jitted so that eager grid refits (outside any model jit) compile once instead of per op.
@functools.partial(jax.jit, static_argnames=("basis", "grid_size", "order", "grid_range",
                                             "use_layernorm"))
def _bases(x_bi, grid, *, basis, grid_size, order, grid_range, use_layernorm):
    if use_layernorm:  # FastKAN: normalise instead of following the data with the grid
        x_bi = layer_norm(x_bi)
    if basis == "bspline":
        return kan_ops.bspline_basis(x_bi, grid, order)
    if basis == "rbf":
        lo, hi = grid_range
        centers = jnp.linspace(lo, hi, grid_size, dtype=x_bi.dtype)
        return kan_ops.rbf_basis(x_bi, centers, kan_ops.default_rbf_width(lo, hi, grid_size))
    if basis == "chebyshev":
        return kan_ops.chebyshev_basis(x_bi, grid_size)
    return kan_ops.fourier_basis(x_bi, grid_size)


_refit_coefficients = jax.jit(kan_ops.refit_coefficients)
_adaptive_grid = jax.jit(kan_ops.adaptive_grid, static_argnums=(1, 2))


class GroupRational(nnx.Module):
    """GR-KAN activation: the safe P5/Q4 rational per channel group (KAT), initialised to fit
    `init` (identity, gelu or silu). Parameters: 6 + 4·groups, not per channel."""

    def __init__(self, dim: int, *, groups: int = 8, init: str = "gelu", rngs: nnx.Rngs):
        if init not in kan_ops.RATIONAL_INIT:
            raise ConfigError(f"unknown rational init {init!r}; known: "
                              f"{', '.join(sorted(kan_ops.RATIONAL_INIT))}")
        if dim % groups:
            raise ConfigError(f"rational groups={groups} must divide the width {dim}")
        coefs = jnp.asarray(kan_ops.RATIONAL_INIT[init], jnp.float32)
        n = kan_ops.NUM_DEGREE + 1
        self.numerator = param(rngs, lambda *_: coefs[:n], (n,), (None,))
        self.denominator = param(rngs, lambda *_: jnp.tile(coefs[n:], (groups, 1)),
                                 (groups, kan_ops.DEN_DEGREE), (None, None))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = kan_ops.rational(x.astype(jnp.float32), self.numerator[...], self.denominator[...])
        return y.astype(x.dtype)


def _kan_kwargs(cfg) -> dict:
    return dict(basis=cfg.get("kan_basis", "bspline"), grid_size=cfg.get("kan_grid_size", 5),
                order=cfg.get("kan_order", 3),
                grid_range=(-cfg.get("kan_grid_bound", 2.0), cfg.get("kan_grid_bound", 2.0)))


@FFN.register("kan")
class KANFFN(nnx.Module):
    """KANLinear(width → hidden) → KANLinear(hidden → width); hidden = width·ffn_mult."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        hidden = hidden_width(cfg)
        self.up = KANLinear(cfg.width, hidden, axes=("embed", "mlp"), rngs=rngs, **_kan_kwargs(cfg))
        self.down = KANLinear(hidden, cfg.width, axes=("mlp", "embed"), rngs=rngs, **_kan_kwargs(cfg))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(self.up(x))


@FFN.register("grkan")
class GroupRationalFFN(nnx.Module):
    """KAT's FFN: fc2(act2(fc1(act1(x)))), act1 = rational(identity), act2 = rational(init).
    fc2 gets the init activation's variance-preserving gain, so activations keep their scale."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        hidden, init = hidden_width(cfg), cfg.get("grkan_init", "gelu")
        groups = cfg.get("grkan_groups", 8)
        self.act1 = GroupRational(cfg.width, groups=groups, init="identity", rngs=rngs)
        self.fc1 = dense(cfg, cfg.width, hidden, axes=("embed", "mlp"), rngs=rngs, use_bias=True,
                         init=nnx.initializers.variance_scaling(1.0, "fan_in", "normal"))
        self.act2 = GroupRational(hidden, groups=groups, init=init, rngs=rngs)
        gain_sq = kan_ops.SECOND_MOMENT_GAIN_SQ[init]
        self.fc2 = dense(cfg, hidden, cfg.width, axes=("mlp", "embed"), rngs=rngs, use_bias=True,
                         init=nnx.initializers.variance_scaling(gain_sq, "fan_in", "normal"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act2(self.fc1(self.act1(x))))


class PolyActivation(nnx.Module):
    """PolyCom: Σ_{i=1..r} a_i·g(x)^i + a_0, with a_i = 1/r and a_0 = 0 at init."""

    def __init__(self, kind: str, order: int = 3, *, rngs: nnx.Rngs):
        self.fn = {"polyrelu": kan_ops.poly_relu, "polynorm": kan_ops.poly_norm}[kind]
        self.coef = param(rngs, lambda *_: jnp.full((order,), 1.0 / order), (order,), (None,))
        self.bias = param(rngs, nnx.initializers.zeros, (), ())

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fn(x, self.coef[...], self.bias[...])


def _poly_ffn(kind: str):
    class PolyFFN(nnx.Module):
        def __init__(self, cfg, *, rngs: nnx.Rngs):
            self.up = dense(cfg, cfg.width, hidden_width(cfg), axes=("embed", "mlp"), rngs=rngs)
            self.act = PolyActivation(kind, cfg.get("polycom_order", 3), rngs=rngs)
            self.down = dense(cfg, hidden_width(cfg), cfg.width, axes=("mlp", "embed"), rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.down(self.act(self.up(x)))

    PolyFFN.__name__ = PolyFFN.__qualname__ = f"{kind.capitalize()}FFN"
    PolyFFN.__doc__ = f"down({kind}(up(x))), the PolyCom FFN (Zhuo et al. 2024)."
    return FFN.register(kind)(PolyFFN)


PolyReLUFFN = _poly_ffn("polyrelu")
PolyNormFFN = _poly_ffn("polynorm")


def plot_edge_functions(layer: KANLinear, lo: float = -1.0, hi: float = 1.0, num: int = 101):
    """A matplotlib figure with one panel per edge φ_oi over [lo, hi] (rows: outputs,
    columns: inputs; pruned edges greyed). Returns (figure, curves [num, out, in])."""
    import matplotlib.pyplot as plt  # only for plotting: an optional dependency
    x = jnp.linspace(lo, hi, num)
    curves = np.asarray(layer.edge_values(jnp.broadcast_to(x[:, None], (num, layer.in_features))))
    mask = np.asarray(layer.edge_mask[...])
    fig, axes = plt.subplots(layer.out_features, layer.in_features, squeeze=False,
                             figsize=(1.6 * layer.in_features, 1.2 * layer.out_features))
    for o in range(layer.out_features):
        for i in range(layer.in_features):
            axes[o, i].plot(np.asarray(x), curves[:, o, i], color="C0" if mask[o, i] else "0.8")
            axes[o, i].set_xticks([])
            axes[o, i].set_yticks([])
    fig.tight_layout()
    return fig, curves
