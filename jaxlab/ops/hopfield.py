"""Modern (continuous) Hopfield networks: energy, retrieval update and the multi-head association.

Energy of a state ξ against stored patterns X (rows x_i, N of them):
    E(ξ) = −β⁻¹ log Σ_i exp(β x_i·ξ) + ½ ξ·ξ + β⁻¹ log N + ½ M²,   M = max_i ‖x_i‖.
Its CCCP minimisation gives the update ξ ← Xᵀ softmax(β X ξ), which never increases E.
With projected queries and keys the first update is softmax attention; further updates
retrieve again in key space (q ← ξ k), so `update_steps_max` extra softmaxes refine the state.

Iterations are a fixed-trip `lax.scan` (reverse-differentiable) with a per-head `active` mask
that freezes a head once its association matrix stops moving (the early stop of the reference
package, which couples the batch: a head runs until every batch item has converged).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def energy(state_ld: jax.Array, stored_sd: jax.Array, beta: float | jax.Array) -> jax.Array:
    """Energy [..., l] of each state row against the stored rows [..., s, d].

    `beta` is a scalar or an array over the leading (batch, head) dims.
    """
    beta = jnp.asarray(beta, state_ld.dtype)
    logits = beta[..., None, None] * jnp.einsum("...ld,...sd->...ls", state_ld, stored_sd)
    lse = jax.nn.logsumexp(logits, axis=-1) / beta[..., None]
    num_stored = stored_sd.shape[-2]
    max_norm_sq = jnp.max(jnp.sum(stored_sd * stored_sd, axis=-1), axis=-1, keepdims=True)
    return (-lse + 0.5 * jnp.sum(state_ld * state_ld, axis=-1)
            + jnp.log(num_stored) / beta[..., None] + 0.5 * max_norm_sq)


def retrieve(state_ld: jax.Array, stored_sd: jax.Array, beta: float | jax.Array,
             steps: int = 1) -> jax.Array:
    """`steps` updates ξ ← Xᵀ softmax(β X ξ) of every state row (pure retrieval, no projections).

    `beta` is a scalar or an array over the leading (batch, head) dims.
    """
    beta = jnp.asarray(beta, state_ld.dtype)[..., None, None]

    def update(xi_ld, _):
        probs_ls = jax.nn.softmax(beta * jnp.einsum("...ld,...sd->...ls", xi_ld, stored_sd), axis=-1)
        return jnp.einsum("...ls,...sd->...ld", probs_ls, stored_sd), None
    return jax.lax.scan(update, state_ld, None, length=steps)[0]


def combine_masks(key_mask_bs: jax.Array | None, association_mask: jax.Array | None,
                  ) -> jax.Array | None:
    """One boolean mask broadcastable to [b, h, l, s]; True where a state may associate.

    key_mask_bs: [b, s] (True = a real stored pattern, False = padding).
    association_mask: [l, s] or [b, h, l, s], boolean (True = allowed).
    """
    mask = None
    if key_mask_bs is not None:
        mask = key_mask_bs.astype(bool)[:, None, None, :]
    if association_mask is not None:
        allowed = association_mask.astype(bool)
        if allowed.ndim == 2:
            allowed = allowed[None, None]
        mask = allowed if mask is None else mask & allowed
    return mask


def _softmax_masked(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jax.nn.softmax(logits, axis=-1)
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    # A state whose patterns are all masked gets zero weights rather than a uniform row.
    return jnp.where(mask, jax.nn.softmax(logits, axis=-1), 0.0)


def per_head(value: float | int | jax.Array, num_heads: int, dtype=jnp.float32) -> jax.Array:
    """A scalar or [h] option as an [h] array."""
    return jnp.broadcast_to(jnp.asarray(value, dtype), (num_heads,))


def associate(q_bhld: jax.Array, k_bhsd: jax.Array, *, beta_h: jax.Array,
              update_steps_max: int | jax.Array = 0, update_steps_eps: float | jax.Array = 1e-4,
              mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """The association matrix ξ [b, h, l, s] after up to 1 + update_steps_max softmaxes.

    Step 0: ξ = softmax(β q kᵀ). Step t ≥ 1, for heads still active:
    q ← ξ k, ξ = softmax(β q kᵀ).
    A head stops after its own update_steps_max (an int or [h] array, ≥ 0) or once
    max_batch ‖ξ_t − ξ_{t−1}‖_F ≤ update_steps_eps. Returns (ξ, softmax count per head [h]).
    """
    num_heads = q_bhld.shape[1]
    steps_max_h = jnp.asarray(update_steps_max, jnp.int32) * jnp.ones((num_heads,), jnp.int32)
    eps_h = per_head(update_steps_eps, num_heads)
    # A concrete (Python or numpy) value: it fixes the scan length.
    trip_count = int(np.max(np.asarray(update_steps_max)))
    beta = beta_h.astype(q_bhld.dtype)[None, :, None, None]

    def association(q):
        return _softmax_masked(beta * jnp.einsum("bhld,bhsd->bhls", q, k_bhsd), mask)

    xi = association(q_bhld)
    if trip_count == 0:
        return xi, jnp.ones((num_heads,), jnp.int32)

    def step(carry, t):
        xi, active_h, count_h = carry
        candidate = association(jnp.einsum("bhls,bhsd->bhld", xi, k_bhsd))
        active = active_h[None, :, None, None]
        new_xi = jnp.where(active, candidate, xi)
        change_bh = jnp.sqrt(jnp.sum(jnp.square(new_xi - xi), axis=(-2, -1)))
        still_moving_h = jax.lax.stop_gradient(jnp.max(change_bh, axis=0)) > eps_h
        count_h = count_h + active_h.astype(jnp.int32)
        next_active = active_h & still_moving_h & (t + 1 <= steps_max_h)
        return (new_xi, next_active, count_h), None

    first_active = steps_max_h >= 1
    (xi, _, count_h), _ = jax.lax.scan(
        step, (xi, first_active, jnp.ones((num_heads,), jnp.int32)),
        jnp.arange(1, trip_count + 1))
    return xi, count_h
