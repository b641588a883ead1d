"""Synthetic token tasks that probe in-context recall: mqar and copy.

Each example is one token sequence s of length seq_len + 1 with inputs = s[:-1]
and targets = s[1:]; weights pick the positions whose target needs recall.
Token 0 is padding (never weighted).
"""
from __future__ import annotations

import numpy as np

from jaxlab.data.base import Dataset, int_field, lm_spec
from jaxlab.errors import ConfigError
from jaxlab.registry import DATASETS

PAD = 0
SEPARATOR = 1


def random_subsets(rng: np.random.Generator, batch: int, population: int, k: int) -> np.ndarray:
    """[batch, k] distinct ids from range(population) per row, in random order.

    argpartition keeps this O(batch * population) for large vocabularies; the
    k smallest of iid uniforms are a uniform subset, and ordering them by those
    same values gives a uniformly random order.
    """
    noise = rng.random((batch, population))
    chosen = np.argpartition(noise, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(noise, chosen, axis=1), axis=1)
    return np.take_along_axis(chosen, order, axis=1)


def shifted(seq: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    return {"inputs": seq[:, :-1].astype(np.int32), "targets": seq[:, 1:].astype(np.int32),
            "weights": weights.astype(np.float32)}


class TokenTask(Dataset):
    task = "lm"

    def example_spec(self):
        return lm_spec(self.seq_len)


class MQAR(TokenTask):
    """Multi-query associative recall (as in Zoology / Based).

    Layout, with n = num_pairs, keys k_i from ids [1, V//2), values v_i from ids
    [V//2, V), both distinct within an example:
        k_1 v_1 k_2 v_2 ... k_n v_n  q_1 a_1 ... q_n a_n  0 0 ...
    The queries q are the n keys in a random order and a_j is q_j's value. The
    weighted positions are those whose input is a query, so the target is its
    answer: exactly n per example. Needs seq_len >= 4n - 1 (the last answer is
    only a target) and n <= V//2 - 1.

    Config: seq_len (64), vocab_size (64), num_pairs (8).
    """
    name = "mqar"

    def __init__(self, cfg):
        self.seq_len = int_field(cfg, "seq_len", 64)
        self.vocab_size = int_field(cfg, "vocab_size", 64, minimum=4)
        self.num_pairs = int_field(cfg, "num_pairs", 8)
        n, half = self.num_pairs, self.vocab_size // 2
        if n > half - 1:
            raise ConfigError(f"data.num_pairs {n} needs distinct keys from {half - 1} key ids; "
                              f"use num_pairs <= {half - 1} or vocab_size >= {2 * n + 2}.")
        if self.seq_len < 4 * n - 1:
            raise ConfigError(f"data.seq_len {self.seq_len} is too short for {n} pairs and "
                              f"their queries; use seq_len >= {4 * n - 1}.")

    def _make_rows(self, split, rng, batch_size, rows):
        n, half = self.num_pairs, self.vocab_size // 2
        keys = (random_subsets(rng, batch_size, half - 1, n) + 1)[rows]
        values = (random_subsets(rng, batch_size, self.vocab_size - half, n) + half)[rows]
        order = np.argsort(rng.random((batch_size, n)), axis=1)[rows]
        b = keys.shape[0]
        seq = np.full((b, self.seq_len + 1), PAD, np.int32)
        seq[:, 0:2 * n:2], seq[:, 1:2 * n:2] = keys, values
        seq[:, 2 * n:4 * n:2] = np.take_along_axis(keys, order, axis=1)
        seq[:, 2 * n + 1:4 * n:2] = np.take_along_axis(values, order, axis=1)
        weights = np.zeros((b, self.seq_len), np.float32)
        weights[:, 2 * n:4 * n:2] = 1.0
        return shifted(seq, weights)

    def source_facts(self):
        return {"seq_len": self.seq_len, "num_pairs": self.num_pairs}


class Copy(TokenTask):
    """Copy a random string after a separator.

    Layout, with L = seq_len // 2 and x_i uniform over ids [2, V):
        x_1 ... x_L  1  x_1 ... x_L  [0 if seq_len is odd]
    Weighted positions are those whose target is a copied token x_i (inputs
    L .. 2L-1): L per example.

    Config: seq_len (64), vocab_size (16).
    """
    name = "copy"

    def __init__(self, cfg):
        self.seq_len = int_field(cfg, "seq_len", 64, minimum=2)
        self.vocab_size = int_field(cfg, "vocab_size", 16, minimum=3)

    def _make_rows(self, split, rng, batch_size, rows):
        half = self.seq_len // 2
        tokens = rng.integers(2, self.vocab_size, size=(batch_size, half))[rows]
        b = tokens.shape[0]
        seq = np.full((b, self.seq_len + 1), PAD, np.int32)
        seq[:, :half], seq[:, half], seq[:, half + 1:2 * half + 1] = tokens, SEPARATOR, tokens
        weights = np.zeros((b, self.seq_len), np.float32)
        weights[:, half:2 * half] = 1.0
        return shifted(seq, weights)

    def source_facts(self):
        return {"seq_len": self.seq_len, "copy_len": self.seq_len // 2}


DATASETS.register("mqar")(MQAR)
DATASETS.register("copy")(Copy)
