"""Cached autoregressive decoding: `generate(model, prompt, steps, temperature, rng)`.

Every attention layer keeps what it needs to continue a sequence (a KV cache for the softmax
family, the running state for linear kinds; see jaxlab/layers/decode_cache.py), so each new
token costs one position's work. The whole prompt-then-sample loop is one lax.scan inside one
jit, with the parameters as arguments rather than baked-in constants.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def init_cache(model: nnx.Module, batch: int, max_len: int) -> None:
    """Creates the decode cache of every layer that has one (in place). A module with its own
    init_cache covers the modules inside it (scanned blocks stack their layers' caches)."""
    owners = [(path, module) for path, module in nnx.iter_modules(model)
              if module is not model and hasattr(module, "init_cache")]
    owner_paths = [path for path, _ in owners]
    for path, module in owners:
        if not any(path[:len(outer)] == outer and path != outer for outer in owner_paths):
            module.init_cache(batch, max_len)


def _check_length(model, length: int) -> None:
    table = getattr(getattr(model, "positions", None), "table", None)
    if table is not None and length > table.shape[0]:
        # A gather past the learned table would silently reuse its last row.
        raise ValueError(f"prompt + steps = {length} exceeds the {table.shape[0]} learned "
                         f"positions (model.max_len)")


def generate(model: nnx.Module, prompt, steps: int, temperature: float = 0.0,
             rng: jax.Array | None = None) -> jax.Array:
    """Extends `prompt` ([t] or [b, t] token ids, t ≥ 1) by `steps` tokens and returns them.

    temperature 0 picks the most likely token; otherwise tokens are drawn from
    softmax(logits / temperature) with `rng` (default key 0). The model is copied first, so
    its own state never gains a cache.
    """
    prompt = jnp.asarray(prompt, jnp.int32)
    squeeze = prompt.ndim == 1
    prompt_bt = prompt[None] if squeeze else prompt
    batch, prompt_len = prompt_bt.shape
    if prompt_len < 1 or steps < 1:
        raise ValueError(f"generate needs a prompt and steps ≥ 1, got {prompt_len} and {steps}")
    total = prompt_len + steps
    _check_length(model, total)
    decoder = nnx.merge(*nnx.split(model))  # a copy: the cache goes into it, not into `model`
    init_cache(decoder, batch, total)
    graphdef, state = nnx.split(decoder)
    rng = jax.random.key(0) if rng is None else rng
    tokens = _decode_loop(graphdef, state, prompt_bt, rng, steps=steps,
                          temperature=float(temperature))
    return tokens[0] if squeeze else tokens


def _pick(logits_bv, key, temperature):
    if temperature > 0:
        return jax.random.categorical(key, logits_bv / temperature).astype(jnp.int32)
    return jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=("steps", "temperature"))
def _decode_loop(graphdef, state, prompt_bt, rng, *, steps, temperature):
    batch, prompt_len = prompt_bt.shape

    def feed(carry, position):
        state, previous_b, key = carry
        # The prompt is fed token by token, then each sampled token goes back in.
        token_b = jnp.where(position < prompt_len,
                            prompt_bt[:, jnp.minimum(position, prompt_len - 1)], previous_b)
        model = nnx.merge(graphdef, state)
        logits = model(token_b[:, None], positions_bt=jnp.full((batch, 1), position), decode=True)
        key, subkey = jax.random.split(key)
        next_b = _pick(logits[:, -1], subkey, temperature)
        return (nnx.state(model), next_b, key), next_b

    carry = (state, jnp.zeros((batch,), jnp.int32), rng)
    _, picked_nb = jax.lax.scan(feed, carry, jnp.arange(prompt_len + steps - 1))
    return picked_nb[prompt_len - 1:].T
