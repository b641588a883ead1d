import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from ml_collections import ConfigDict

from jaxlab.data import build_dataset
from jaxlab.errors import ConfigError


def make(name, **fields):
    return build_dataset(ConfigDict({"name": name, **fields}))


def check_mqar(inputs, targets, weights, num_pairs, vocab_size):
    half = vocab_size // 2
    for x, y, w in zip(inputs, targets, weights):
        keys, values = x[0:2 * num_pairs:2], x[1:2 * num_pairs:2]
        assert len(set(keys)) == num_pairs and len(set(values)) == num_pairs
        assert np.all((1 <= keys) & (keys < half)) and np.all(values >= half)
        answer = dict(zip(keys, values))
        weighted = np.flatnonzero(w)
        assert len(weighted) == num_pairs
        assert sorted(x[weighted]) == sorted(keys)  # every key queried once
        for pos in weighted:
            assert y[pos] == answer[x[pos]]
        assert np.all(x[4 * num_pairs:] == 0)  # padding after the queries


def test_mqar_weighted_targets_are_the_recalled_values():
    ds = make("mqar", seq_len=64, vocab_size=64, num_pairs=8)
    out = ds.batch("train", 0, 32, seed=0)
    check_mqar(out["inputs"], out["targets"], out["weights"], 8, 64)
    np.testing.assert_array_equal(out["targets"][:, :-1], out["inputs"][:, 1:])


@settings(max_examples=25, deadline=None)
@given(num_pairs=st.integers(1, 12), extra_vocab=st.integers(0, 40),
       extra_len=st.integers(0, 10), seed=st.integers(0, 2**31))
def test_mqar_holds_for_any_valid_config(num_pairs, extra_vocab, extra_len, seed):
    vocab_size = 2 * num_pairs + 2 + extra_vocab
    seq_len = 4 * num_pairs - 1 + extra_len
    out = make("mqar", seq_len=seq_len, vocab_size=vocab_size,
               num_pairs=num_pairs).batch("valid", 1, 4, seed=seed)
    check_mqar(out["inputs"], out["targets"], out["weights"], num_pairs, vocab_size)


def test_mqar_query_order_varies():
    out = make("mqar", seq_len=64, num_pairs=8).batch("train", 0, 16, seed=0)
    queries = out["inputs"][:, 16:32:2]
    keys = out["inputs"][:, 0:16:2]
    assert not np.array_equal(queries, keys)


@pytest.mark.parametrize("fields, match", [
    (dict(seq_len=30, num_pairs=8), "data.seq_len 30.*seq_len >= 31"),
    (dict(vocab_size=16, num_pairs=8), "data.num_pairs 8.*vocab_size >= 18"),
    (dict(vocab_size=2), "data.vocab_size.*2"),
])
def test_mqar_impossible_configs_are_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        make("mqar", **fields)


@pytest.mark.parametrize("seq_len", [2, 9, 20])
def test_copy_weighted_targets_repeat_the_first_half(seq_len):
    ds = make("copy", seq_len=seq_len, vocab_size=16)
    out = ds.batch("train", 2, 8, seed=0)
    half = seq_len // 2
    x, y, w = out["inputs"], out["targets"], out["weights"]
    assert np.all(x[:, half] == 1)  # separator
    assert np.all((x[:, :half] >= 2) & (x[:, :half] < 16))
    assert np.all(w.sum(axis=1) == half)
    for row_x, row_y, row_w in zip(x, y, w):
        np.testing.assert_array_equal(row_y[row_w == 1], row_x[:half])
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])


@pytest.mark.parametrize("fields", [dict(seq_len=1), dict(vocab_size=2)])
def test_copy_impossible_configs_are_config_errors(fields):
    with pytest.raises(ConfigError, match="data."):
        make("copy", **fields)
