"""eval_lengths: one row per length, equal to the loss computed by hand, same batches at every
length, and learned positions refusing lengths they cannot represent."""
import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import jaxlab.analysis
from jaxlab.analysis.lengths import length_multiples
from jaxlab.config_defaults import transformer
from jaxlab.data import build_dataset
from jaxlab.models import build
from jaxlab.ops.losses import softmax_cross_entropy

DATA = ml_collections.ConfigDict(dict(name="pysrc", seq_len=8))


def lm(**overrides):
    fields = dict(width=16, depth=1, num_heads=2, max_len=8, ffn_mult=2.0, vocab_size=256)
    return build(transformer(**{**fields, **overrides}), nnx.Rngs(0))


def test_rows_match_a_hand_computed_loss():
    model = lm(attention="softplus")
    lengths = length_multiples(8, (1, 2, 4))
    rows = jaxlab.analysis.eval_lengths(model, DATA, lengths, batch_size=2, batches=2)
    assert [r["length"] for r in rows] == [8, 16, 32]
    data = build_dataset(ml_collections.ConfigDict(dict(name="pysrc", seq_len=16)))
    total = weight = 0.0
    for step in range(2):
        batch = data.batch("valid", step, 2, seed=0)
        losses = softmax_cross_entropy(model(jnp.asarray(batch["inputs"])), jnp.asarray(batch["targets"]))
        total += float(jnp.sum(losses * batch["weights"]))
        weight += float(batch["weights"].sum())
    assert rows[1]["tokens"] == 64
    np.testing.assert_allclose(rows[1]["loss"], total / weight, rtol=1e-5)
    np.testing.assert_allclose(rows[1]["bpb"], rows[1]["loss"] / math.log(2), rtol=1e-6)
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_dataset_may_be_a_length_function():
    calls = []

    def make(length):
        calls.append(length)
        return build_dataset(ml_collections.ConfigDict(dict(name="pysrc", seq_len=length)))

    rows = jaxlab.analysis.eval_lengths(lm(attention="linear"), make, [8, 24], batch_size=2, batches=1)
    assert calls == [8, 24] and len(rows) == 2


def test_learned_positions_refuse_lengths_past_max_len():
    with pytest.raises(ValueError, match="exceeds the 8 learned positions"):
        jaxlab.analysis.eval_lengths(lm(position="learned"), DATA, [8, 16], batch_size=2, batches=1)
