"""Multiple-instance learning bags: bit_bags and digit_bags (binary labels, no download).

A bag is a set of instances with one label: positive iff it holds at least one "signal"
instance. Inputs are [bag_size, features + 1] float32; the last channel is 1 for a real
instance and 0 for padding, so a model called with inputs alone can still mask its pooling.

bit_bags: a fixed pool of `num_bags` bags (the Hopfield-layers bit-pattern task: 16 instances
of 8 random bits as ±1, 8 signal patterns, one signal in each positive bag), built once from
`pool_seed`; a fixed last `valid_fraction` of it is the valid split. Batches sample the split
with replacement, so the batch at a step is a pure function of (seed, split, step).

digit_bags: bags of scikit-learn 8×8 digits (64 features in [0, 1]) with a length drawn around
`mean_bag_size`; positive iff a `target_digit` image is in the bag. Train bags use only train
images and valid bags only valid images (the digits split of jaxlab.data.digits).
"""
from __future__ import annotations

import functools

import numpy as np

from jaxlab.data.base import Dataset, fraction_field, int_field
from jaxlab.errors import ConfigError
from jaxlab.registry import DATASETS


def with_mask_channel(instances_bsf: np.ndarray, lengths_b: np.ndarray) -> np.ndarray:
    """Zero the padding and append the validity channel."""
    valid_bs = np.arange(instances_bsf.shape[1])[None, :] < lengths_b[:, None]
    instances = np.where(valid_bs[..., None], instances_bsf, 0.0)
    return np.concatenate([instances, valid_bs[..., None]], axis=-1).astype(np.float32)


def classification_spec(bag_size: int, features: int):
    return {"inputs": ((bag_size, features + 1), np.dtype(np.float32)),
            "targets": ((), np.dtype(np.int32)),
            "weights": ((), np.dtype(np.float32))}


@functools.lru_cache(maxsize=4)
def bit_bag_pool(num_bags: int, bag_size: int, num_bits: int, num_signals: int,
                 signals_per_bag: int, pool_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(bags [n, bag_size, num_bits] in ±1, labels [n]); half the bags are positive."""
    rng = np.random.default_rng(pool_seed)
    codes = rng.permutation(2 ** num_bits)
    signals, noise = codes[:num_signals], codes[num_signals:]
    bag_codes = rng.choice(noise, size=(num_bags, bag_size))
    labels = (np.arange(num_bags) % 2).astype(np.int32)
    for i in np.flatnonzero(labels):
        slots = rng.choice(bag_size, size=signals_per_bag, replace=False)
        bag_codes[i, slots] = rng.choice(signals, size=signals_per_bag)
    bits = (bag_codes[..., None] >> np.arange(num_bits)) & 1
    order = rng.permutation(num_bags)
    return (2.0 * bits - 1.0).astype(np.float32)[order], labels[order]


@DATASETS.register("bit_bags")
class BitBags(Dataset):
    """Config: num_bags (2048), bag_size (16), num_bits (8), num_signals (8),
    signals_per_bag (1), pool_seed (0), valid_fraction (0.2)."""
    name = "bit_bags"
    task = "classification"
    num_classes = 2

    def __init__(self, cfg):
        self.bag_size = int_field(cfg, "bag_size", 16)
        self.num_bits = int_field(cfg, "num_bits", 8)
        num_signals = int_field(cfg, "num_signals", 8)
        signals_per_bag = int_field(cfg, "signals_per_bag", 1)
        num_bags = int_field(cfg, "num_bags", 2048, minimum=10)
        if self.num_bits > 20 or num_signals >= 2 ** self.num_bits:
            raise ConfigError(f"data.num_signals={num_signals} must be below 2**num_bits="
                              f"{2 ** min(self.num_bits, 20)} and num_bits <= 20")
        if signals_per_bag > self.bag_size:
            raise ConfigError(f"data.signals_per_bag={signals_per_bag} exceeds data.bag_size="
                              f"{self.bag_size}")
        bags, labels = bit_bag_pool(num_bags, self.bag_size, self.num_bits, num_signals,
                                    signals_per_bag, int_field(cfg, "pool_seed", 0, minimum=0))
        num_valid = max(1, int(round(num_bags * fraction_field(cfg, "valid_fraction", 0.2))))
        lengths = np.full(num_bags, self.bag_size)
        inputs = with_mask_channel(bags, lengths)
        self.splits = {"train": (inputs[:-num_valid], labels[:-num_valid]),
                       "valid": (inputs[-num_valid:], labels[-num_valid:])}

    def example_spec(self):
        return classification_spec(self.bag_size, self.num_bits)

    def _make_rows(self, split, rng, batch_size, rows):
        inputs, labels = self.splits[split]
        picks = rng.integers(0, len(labels), size=batch_size)[rows]
        return {"inputs": inputs[picks], "targets": labels[picks],
                "weights": np.ones(len(picks), np.float32)}

    def source_facts(self):
        return {"source": "synthetic bit-pattern bags",
                "examples": {name: int(len(lbl)) for name, (_, lbl) in self.splits.items()}}


@DATASETS.register("digit_bags")
class DigitBags(Dataset):
    """Config: target_digit (9), mean_bag_size (10), bag_size (16, the padded length),
    positive_fraction (0.5)."""
    name = "digit_bags"
    task = "classification"
    num_classes = 2

    def __init__(self, cfg):
        from jaxlab.data.digits import load_digits_splits
        self.target = int_field(cfg, "target_digit", 9, minimum=0)
        if self.target > 9:
            raise ConfigError(f"data.target_digit={self.target} must be a digit 0..9")
        self.bag_size = int_field(cfg, "bag_size", 16, minimum=2)
        self.mean_bag_size = int_field(cfg, "mean_bag_size", 10)
        self.positive_fraction = fraction_field(cfg, "positive_fraction", 0.5)
        self.splits = {}
        for name, (images, labels) in load_digits_splits().items():
            flat = images.reshape(len(images), -1)
            self.splits[name] = (flat[labels == self.target], flat[labels != self.target])

    def example_spec(self):
        return classification_spec(self.bag_size, 64)

    def _make_rows(self, split, rng, batch_size, rows):
        targets_img, others_img = self.splits[split]
        # The whole batch's plan is drawn on every process (see base.py), rows are kept after.
        lengths = np.clip(np.rint(rng.normal(self.mean_bag_size, 2.0, size=batch_size)),
                          2, self.bag_size).astype(np.int64)
        labels = (rng.random(batch_size) < self.positive_fraction).astype(np.int32)
        picks = rng.integers(0, len(others_img), size=(batch_size, self.bag_size))
        bags = others_img[picks]
        # Positive bags get 1 + Binomial(len - 1, 0.1) target images at random slots in the bag.
        num_targets = 1 + rng.binomial(lengths - 1, 0.1)
        slot_order = np.argsort(rng.random((batch_size, self.bag_size))
                                + (np.arange(self.bag_size)[None] >= lengths[:, None]), axis=1)
        target_picks = rng.integers(0, len(targets_img), size=(batch_size, self.bag_size))
        for i in np.flatnonzero(labels):
            slots = slot_order[i, :num_targets[i]]
            bags[i, slots] = targets_img[target_picks[i, :num_targets[i]]]
        return {"inputs": with_mask_channel(bags, lengths)[rows], "targets": labels[rows],
                "weights": np.ones(batch_size, np.float32)[rows]}

    def source_facts(self):
        return {"source": "sklearn.datasets.load_digits bags",
                "target_digit": self.target,
                "images": {name: int(len(t) + len(o)) for name, (t, o) in self.splits.items()}}
