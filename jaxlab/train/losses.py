"""Loss kinds for `train.loss`: each maps (logits, batch) to per-example losses and a correctness."""
from __future__ import annotations

import jax

from jaxlab.ops import losses
from jaxlab.registry import LOSSES


@LOSSES.register("xent")
def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Softmax cross-entropy: next-token prediction for an LM, the label for a classifier."""
    return losses.softmax_cross_entropy(logits, targets)
