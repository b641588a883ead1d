"""Length evaluation: a trained LM's loss at multiples of its training length (1×…16×), for
extrapolation studies (LSSA's "nearly constant loss out to 16×", RoPE or ALiBi limits)."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxlab.data import Dataset, build_dataset
from jaxlab.ops.losses import softmax_cross_entropy


def dataset_at(dataset: Any, length: int) -> Dataset:
    """The dataset with sequences of `length` tokens, from a data config or a `length -> Dataset`
    function (a built Dataset has its length fixed, so it cannot be stretched)."""
    if callable(dataset) and not isinstance(dataset, (dict, ml_collections.ConfigDict)):
        return dataset(length)
    cfg = ml_collections.ConfigDict(dict(dataset))
    cfg.seq_len = int(length)
    return build_dataset(cfg)


def eval_lengths(model: nnx.Module, dataset: Any, lengths: Sequence[int], *, batch_size: int = 4,
                 batches: int = 2, split: str = "valid", seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> list[dict[str, float]]:
    """Weighted mean next-token loss of `model` on `batches` batches at each sequence length.

    Returns one row per length: length, loss (nats), bpb (for byte datasets) and the number of
    scored tokens. The same (seed, step) batches are drawn at every length, so rows differ only
    in how much context the model sees. A model that cannot represent a length (learned
    positions past model.max_len) raises.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def summed_loss(state, batch):
        logits = nnx.merge(graphdef, state)(batch["inputs"])
        losses = softmax_cross_entropy(logits, batch["targets"])
        return jnp.sum(losses * batch["weights"]), jnp.sum(batch["weights"])

    rows = []
    for length in lengths:
        data = dataset_at(dataset, length)
        total, weight = 0.0, 0.0
        for step in range(batches):
            batch = data.batch(split, step, batch_size, seed=seed)
            loss_sum, weight_sum = summed_loss(state, {k: jnp.asarray(v) for k, v in batch.items()})
            total, weight = total + float(loss_sum), weight + float(weight_sum)
        loss = total / max(weight, 1.0)
        row = {"length": int(length), "loss": loss, "tokens": int(weight)}
        if data.bytes_per_token:
            row["bpb"] = loss / math.log(2) / data.bytes_per_token
        rows.append(row)
        if progress is not None:
            progress(f"length {length}: loss {loss:.4f}")
    return rows


def length_multiples(train_length: int, multiples: Sequence[int] = (1, 2, 4, 8, 16)) -> list[int]:
    return [train_length * m for m in multiples]
