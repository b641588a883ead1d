"""Modern Hopfield layers: Hopfield (general association), HopfieldPooling, HopfieldLayer.

The three roles are keywords: `stored` patterns Y (keys, the memory), `state` patterns R
(queries) and the `projection` input (values, default Y). With projections W_Q, W_K, W_V the
output is softmax(β R W_Q (Y W_K)ᵀ) Y W_V (then an output projection), refined by
`update_steps_max` further retrievals in key space (see jaxlab.ops.hopfield.associate).

Differences from the reference PyTorch package, on purpose: `concat_bias_pattern` really appends
the learned bias rows (the reference silently drops them), the Hopfield-space norm has a
head_dim-sized affine even without hidden_size, and every array is batch-first.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers.common import forward_mode, param
from jaxlab.ops import hopfield as hopfield_ops
from jaxlab.ops.norms import layer_norm

ASSOCIATION_ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "gelu": jax.nn.gelu,
                           "silu": jax.nn.silu, "sigmoid": jax.nn.sigmoid}
_normal02 = nnx.initializers.normal(0.02)


class _Norm(nnx.Module):
    """LayerNorm over the last axis with optional affine (the input and Hopfield-space norms)."""

    def __init__(self, dim: int, *, affine: bool, eps: float, rngs: nnx.Rngs):
        self.scale = param(rngs, nnx.initializers.ones, (dim,), (None,)) if affine else None
        self.bias = param(rngs, nnx.initializers.zeros, (dim,), (None,)) if affine else None
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        return layer_norm(x, None if self.scale is None else self.scale[...],
                          None if self.bias is None else self.bias[...], eps=self.eps)


class _HeadProjection(nnx.Module):
    """[b, s, d_in] -> [b, h, s, d_out], one projection per head (+ bias)."""

    def __init__(self, d_in: int, num_heads: int, d_out: int, *, bias: bool, rngs: nnx.Rngs):
        self.kernel = param(rngs, _normal02, (d_in, num_heads, d_out), ("embed", "heads", None))
        self.bias = (param(rngs, nnx.initializers.zeros, (num_heads, d_out), ("heads", None))
                     if bias else None)

    def __call__(self, x_bsd: jax.Array) -> jax.Array:
        y = jnp.einsum("bsd,dhe->bhse", x_bsd, self.kernel[...])
        return y if self.bias is None else y + self.bias[...][None, :, None, :]


def _optional_norm(enabled: bool, dim: int, affine: bool, eps: float, rngs: nnx.Rngs):
    return _Norm(dim, affine=affine, eps=eps, rngs=rngs) if enabled else None


def _apply(norm: _Norm | None, x: jax.Array) -> jax.Array:
    return x if norm is None else norm(x)


class Hopfield(nnx.Module):
    """Multi-head modern Hopfield association with every option of the reference `Hopfield`.

    Sizes: `input_size` is the raw state dimension; `stored_pattern_size` and
    `pattern_projection_size` are the raw key/value dimensions (default input_size);
    `hidden_size` is the per-head association dimension (default input_size // num_heads);
    `pattern_size` the per-head value dimension (default hidden_size); `output_size` the output
    projection's width (default input_size). A static role is used as-is for every head, so its
    raw size must equal hidden_size (stored/state) or becomes pattern_size (projection).
    """

    def __init__(self, input_size: int, *, hidden_size: int | None = None,
                 output_size: int | None = None, pattern_size: int | None = None,
                 num_heads: int = 1, scaling: float | Any | None = None,
                 scaling_learnable: bool = False,
                 update_steps_max: int | Any = 0, update_steps_eps: float | Any = 1e-4,
                 normalize_stored_pattern: bool = True, normalize_stored_pattern_affine: bool = True,
                 normalize_stored_pattern_eps: float = 1e-5,
                 normalize_state_pattern: bool = True, normalize_state_pattern_affine: bool = True,
                 normalize_state_pattern_eps: float = 1e-5,
                 normalize_pattern_projection: bool = True,
                 normalize_pattern_projection_affine: bool = True,
                 normalize_pattern_projection_eps: float = 1e-5,
                 normalize_hopfield_space: bool = False,
                 normalize_hopfield_space_affine: bool = False,
                 normalize_hopfield_space_eps: float = 1e-5,
                 stored_pattern_as_static: bool = False, state_pattern_as_static: bool = False,
                 pattern_projection_as_static: bool = False,
                 pattern_projection_as_connected: bool = False,
                 stored_pattern_size: int | None = None, pattern_projection_size: int | None = None,
                 association_activation: str | None = None, dropout: float = 0.0,
                 input_bias: bool = True, concat_bias_pattern: bool = False,
                 add_zero_association: bool = False, disable_out_projection: bool = False,
                 rngs: nnx.Rngs):
        if hidden_size is None:
            if input_size % num_heads:
                raise ConfigError(f"Hopfield input_size={input_size} is not divisible by "
                                  f"num_heads={num_heads}; give hidden_size explicitly")
            hidden_size = input_size // num_heads
        stored_size = stored_pattern_size or input_size
        projection_size = pattern_projection_size or input_size
        for static, raw, role in ((stored_pattern_as_static, stored_size, "stored"),
                                  (state_pattern_as_static, input_size, "state")):
            if static and raw != hidden_size:
                raise ConfigError(f"a static {role} pattern must have hidden_size={hidden_size} "
                                  f"features, got {raw}")
        if pattern_projection_as_static:
            if pattern_projection_as_connected:
                raise ConfigError("pattern_projection_as_static and _as_connected exclude each other")
            pattern_size = projection_size
        pattern_size = pattern_size or hidden_size
        if association_activation is not None and association_activation not in ASSOCIATION_ACTIVATIONS:
            raise ConfigError(f"unknown association_activation {association_activation!r}; known: "
                              f"{', '.join(sorted(ASSOCIATION_ACTIVATIONS))}")
        self.num_heads, self.hidden_size, self.pattern_size = num_heads, hidden_size, pattern_size
        # Plain Python numbers (not arrays) so NNX treats them as static configuration.
        self.update_steps_max = _static(update_steps_max, int)
        self.update_steps_eps = _static(update_steps_eps, float)
        if np.any(np.asarray(self.update_steps_max) < 0):
            raise ConfigError(f"update_steps_max={update_steps_max} must be >= 0")
        static_execution = (stored_pattern_as_static and state_pattern_as_static
                            and pattern_projection_as_static and disable_out_projection)
        if scaling is None:
            scaling = 1.0 if static_execution else 1.0 / math.sqrt(hidden_size)
        # numpy, not jnp: the model may be built inside jit, where jnp values are tracers.
        beta_h = np.broadcast_to(np.asarray(scaling, np.float32), (num_heads,))
        # Learnable β lives in log space so it stays positive.
        self.log_beta = (param(rngs, lambda *_: jnp.log(beta_h), (num_heads,), ("heads",))
                         if scaling_learnable else None)
        self.fixed_beta = None if scaling_learnable else _static(beta_h, float)

        self.stored_norm = _optional_norm(normalize_stored_pattern, stored_size,
                                          normalize_stored_pattern_affine,
                                          normalize_stored_pattern_eps, rngs)
        self.state_norm = _optional_norm(normalize_state_pattern, input_size,
                                         normalize_state_pattern_affine,
                                         normalize_state_pattern_eps, rngs)
        self.projection_norm = _optional_norm(
            normalize_pattern_projection and not pattern_projection_as_connected, projection_size,
            normalize_pattern_projection_affine, normalize_pattern_projection_eps, rngs)
        # One affine shared by q and k, as in the reference.
        self.hopfield_norm = _optional_norm(normalize_hopfield_space, hidden_size,
                                            normalize_hopfield_space_affine,
                                            normalize_hopfield_space_eps, rngs)
        proj = lambda d_in, d_out: _HeadProjection(d_in, num_heads, d_out, bias=input_bias, rngs=rngs)
        self.q_proj = None if state_pattern_as_static else proj(input_size, hidden_size)
        self.k_proj = None if stored_pattern_as_static else proj(stored_size, hidden_size)
        self.connected = pattern_projection_as_connected
        if pattern_projection_as_static:
            self.v_proj = None
        elif pattern_projection_as_connected:
            self.v_proj = param(rngs, _normal02, (num_heads, hidden_size, pattern_size),
                                ("heads", None, None))
        else:
            self.v_proj = proj(projection_size, pattern_size)
        self.bias_k = (param(rngs, _normal02, (num_heads, hidden_size), ("heads", None))
                       if concat_bias_pattern else None)
        self.bias_v = (param(rngs, _normal02, (num_heads, pattern_size), ("heads", None))
                       if concat_bias_pattern else None)
        self.add_zero_association = add_zero_association
        self.out_size = num_heads * pattern_size if disable_out_projection else (output_size or input_size)
        self.out_kernel = None if disable_out_projection else param(
            rngs, _normal02, (num_heads * pattern_size, self.out_size), ("heads", "embed"))
        self.out_bias = None if disable_out_projection else param(
            rngs, nnx.initializers.zeros, (self.out_size,), ("embed",))
        self.association_activation = association_activation
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def pure(cls, size: int, *, scaling: float = 1.0, update_steps_max: int = 0,
             rngs: nnx.Rngs | None = None, **overrides) -> "Hopfield":
        """Plain retrieval Xᵀ softmax(β X ξ): no norms, no projections, one head."""
        kwargs = dict(hidden_size=size, num_heads=1, scaling=scaling,
                      update_steps_max=update_steps_max, normalize_stored_pattern=False,
                      normalize_state_pattern=False, normalize_pattern_projection=False,
                      stored_pattern_as_static=True, state_pattern_as_static=True,
                      pattern_projection_as_static=True, disable_out_projection=True)
        kwargs.update(overrides)
        return cls(size, rngs=rngs or nnx.Rngs(0), **kwargs)

    @classmethod
    def attention(cls, size: int, num_heads: int, *, rngs: nnx.Rngs, **overrides) -> "Hopfield":
        """Multi-head attention: no input norms, β = 1/√head_dim, one association step."""
        kwargs = dict(num_heads=num_heads, normalize_stored_pattern=False,
                      normalize_state_pattern=False, normalize_pattern_projection=False)
        kwargs.update(overrides)
        return cls(size, rngs=rngs, **kwargs)

    # -- pieces ----------------------------------------------------------------------------
    def beta(self) -> jax.Array:
        if self.log_beta is not None:
            return jnp.exp(self.log_beta[...])
        return hopfield_ops.per_head(self.fixed_beta, self.num_heads)

    def _heads(self, x_bsd: jax.Array) -> jax.Array:
        return jnp.broadcast_to(x_bsd[:, None], (x_bsd.shape[0], self.num_heads) + x_bsd.shape[1:])

    def project(self, stored: jax.Array, state: jax.Array, projection: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(q [b,h,l,d], k [b,h,s,d], v [b,h,s,p]) before β and before bias/zero rows."""
        stored, state = _apply(self.stored_norm, stored), _apply(self.state_norm, state)
        projection = _apply(self.projection_norm, projection)
        q = self._heads(state) if self.q_proj is None else self.q_proj(state)
        k = self._heads(stored) if self.k_proj is None else self.k_proj(stored)
        q, k = _apply(self.hopfield_norm, q), _apply(self.hopfield_norm, k)
        if self.connected:
            v = jnp.einsum("bhsd,hde->bhse", k, self.v_proj[...])
        elif self.v_proj is None:
            v = self._heads(projection)
        else:
            v = self.v_proj(projection)
        return q, k, v

    def _extra_rows(self, k, v, key_mask_bs):
        """Append the learned bias row and/or the zero row to k and v (always associable)."""
        b, h = k.shape[:2]
        rows_k, rows_v = [], []
        if self.bias_k is not None:
            rows_k.append(jnp.broadcast_to(self.bias_k[...][None, :, None], (b, h, 1, k.shape[-1])))
            rows_v.append(jnp.broadcast_to(self.bias_v[...][None, :, None], (b, h, 1, v.shape[-1])))
        if self.add_zero_association:
            rows_k.append(jnp.zeros((b, h, 1, k.shape[-1]), k.dtype))
            rows_v.append(jnp.zeros((b, h, 1, v.shape[-1]), v.dtype))
        if not rows_k:
            return k, v, key_mask_bs, 0
        k, v = jnp.concatenate([k, *rows_k], axis=2), jnp.concatenate([v, *rows_v], axis=2)
        if key_mask_bs is not None:
            key_mask_bs = jnp.concatenate(
                [key_mask_bs.astype(bool), jnp.ones((b, len(rows_k)), bool)], axis=1)
        return k, v, key_mask_bs, len(rows_k)

    def association(self, stored=None, state=None, projection=None, *, key_mask_bs=None,
                    association_mask=None):
        """(ξ [b, h, l, s'], v [b, h, s', p], softmax count per head), s' including extra rows."""
        stored, state, projection = _roles(stored, state, projection)
        q, k, v = self.project(stored, state, projection)
        k, v, key_mask_bs, extra = self._extra_rows(k, v, key_mask_bs)
        if association_mask is not None and extra:
            pad = [(0, 0)] * (association_mask.ndim - 1) + [(0, extra)]
            association_mask = jnp.pad(association_mask.astype(bool), pad, constant_values=True)
        mask = hopfield_ops.combine_masks(key_mask_bs, association_mask)
        xi, count_h = hopfield_ops.associate(q, k, beta_h=self.beta(),
                                             update_steps_max=self.update_steps_max,
                                             update_steps_eps=self.update_steps_eps, mask=mask)
        return xi, v, count_h

    def __call__(self, x=None, *, stored=None, state=None, projection=None, key_mask_bs=None,
                 association_mask=None, return_association: bool = False):
        """Output [b, l, out_size]; `x` alone means self-association (stored = state = projection).

        key_mask_bs [b, s]: True for real stored patterns; association_mask [l, s] or
        [b, h, l, s]: True where state l may associate with pattern s.
        """
        if x is not None:
            stored = state = projection = x
        xi, v, _ = self.association(stored, state, projection, key_mask_bs=key_mask_bs,
                                    association_mask=association_mask)
        weights = xi
        if self.dropout is not None and forward_mode().training:
            weights = self.dropout(xi, deterministic=False)
        out = jnp.einsum("bhls,bhsp->blhp", weights, v)
        out = out.reshape(out.shape[:2] + (-1,))
        if self.out_kernel is not None:
            out = out @ self.out_kernel[...] + self.out_bias[...]
        if self.association_activation is not None:
            out = ASSOCIATION_ACTIVATIONS[self.association_activation](out)
        return (out, xi) if return_association else out

    def energy(self, stored=None, state=None, *, step: int = 0) -> jax.Array:
        """Energy [b, h, l] of the projected states after `step` pure updates in key space,
        with each head's β (see jaxlab.ops.hopfield.energy)."""
        stored, state, projection = _roles(stored, state, None)
        q, k, _ = self.project(stored, state, projection)
        beta_1h = self.beta()[None, :]
        q = hopfield_ops.retrieve(q, k, beta_1h, steps=step) if step else q
        return hopfield_ops.energy(q, k, beta_1h)


def _static(value, kind):
    """A scalar or per-head option as a Python number or tuple of numbers."""
    array = np.asarray(value)
    return kind(array) if array.ndim == 0 else tuple(kind(v) for v in array.reshape(-1))


def _roles(stored, state, projection):
    if stored is None and state is None:
        raise ValueError("give at least one of stored= or state=")
    stored = state if stored is None else stored
    state = stored if state is None else state
    return stored, state, stored if projection is None else projection


class HopfieldPooling(Hopfield):
    """Attention pooling: `quantity` learned state patterns associate with the stored set.

    Called with the instances [b, s, d] (and an optional projection input); returns
    [b, quantity · out_size]. Permutation invariant over s; masked instances get zero weight.
    """

    def __init__(self, input_size: int, *, quantity: int = 1, trainable: bool = True,
                 rngs: nnx.Rngs, **kwargs):
        super().__init__(input_size, rngs=rngs, **kwargs)
        size = self.hidden_size if kwargs.get("state_pattern_as_static") else input_size
        value = _normal02(rngs.params(), (1, quantity, size), jnp.float32)
        self.pooling_weights = (nnx.Param(value, axes=(None, None, "embed")) if trainable
                                else nnx.Variable(value))

    def __call__(self, stored, projection=None, *, key_mask_bs=None, association_mask=None,
                 return_association: bool = False):
        queries = self.pooling_weights[...]
        state = jnp.broadcast_to(queries, (stored.shape[0],) + queries.shape[1:])
        result = super().__call__(stored=stored, state=state, projection=projection,
                                  key_mask_bs=key_mask_bs, association_mask=association_mask,
                                  return_association=return_association)
        out, xi = result if return_association else (result, None)
        out = out.reshape(out.shape[0], -1)
        return (out, xi) if return_association else out


class HopfieldLayer(Hopfield):
    """A learned lookup table: the states [b, l, d] associate with `quantity` learned stored
    patterns (and learned targets when `lookup_weights_as_separated`). Equivariant over l."""

    def __init__(self, input_size: int, *, quantity: int = 1, trainable: bool = True,
                 lookup_weights_as_separated: bool = False, lookup_targets_as_trainable: bool = True,
                 rngs: nnx.Rngs, **kwargs):
        super().__init__(input_size, rngs=rngs, **kwargs)
        stored_size = (self.hidden_size if kwargs.get("stored_pattern_as_static")
                       else kwargs.get("stored_pattern_size") or input_size)
        lookup = _normal02(rngs.params(), (1, quantity, stored_size), jnp.float32)
        self.lookup_weights = (nnx.Param(lookup, axes=(None, None, None)) if trainable
                               else nnx.Variable(lookup))
        target_weights = None
        if lookup_weights_as_separated:
            target_size = kwargs.get("pattern_projection_size") or input_size
            target = _normal02(rngs.params(), (1, quantity, target_size), jnp.float32)
            target_weights = (nnx.Param(target) if trainable and lookup_targets_as_trainable
                              else nnx.Variable(target))
        self.target_weights = target_weights

    def __call__(self, state, *, association_mask=None, return_association: bool = False):
        b = state.shape[0]
        stored = jnp.broadcast_to(self.lookup_weights[...], (b,) + self.lookup_weights.shape[1:])
        projection = (stored if self.target_weights is None else
                      jnp.broadcast_to(self.target_weights[...], (b,) + self.target_weights.shape[1:]))
        return super().__call__(stored=stored, state=state, projection=projection,
                                association_mask=association_mask,
                                return_association=return_association)
