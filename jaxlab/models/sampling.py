"""Autoregressive sampling from a decoder LM with a fixed-size window (one compiled shape)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def sample_tokens(forward, prompt: np.ndarray, *, length: int, window: int, seed: int = 0,
                  temperature: float = 0.8) -> np.ndarray:
    """Extends `prompt` (1-D token ids) by `length` tokens.

    `forward(tokens_1t) -> logits_1tv` is called on a [1, window] buffer each time; the context
    is the last `window` tokens, right-padded with zeros, and the next token is read at the last
    real position. Causal attention makes the padding invisible to it.
    """
    tokens = list(int(t) for t in prompt)
    key = jax.random.key(seed)
    for _ in range(length):
        context = tokens[-window:]
        buffer = np.zeros((1, window), np.int32)
        buffer[0, :len(context)] = context
        logits = forward(jnp.asarray(buffer))[0, len(context) - 1]
        key, subkey = jax.random.split(key)
        if temperature > 0:
            token = jax.random.categorical(subkey, logits / temperature)
        else:
            token = jnp.argmax(logits)
        tokens.append(int(token))
    return np.asarray(tokens[len(prompt):], np.int32)


def decode_bytes(tokens: np.ndarray) -> str:
    """Byte tokens as text (undecodable bytes replaced), for samples of byte-level LMs."""
    return bytes(int(t) % 256 for t in tokens).decode("utf-8", errors="replace")
