"""bit_bags and digit_bags: labels match the bag contents, masks mark the real instances."""
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxlab.data import build_dataset
from jaxlab.data.bags import bit_bag_pool
from jaxlab.errors import ConfigError


def test_bit_bags_positive_iff_a_signal_pattern_is_present():
    ds = build_dataset(ConfigDict({"name": "bit_bags"}))
    assert (ds.task, ds.num_classes) == ("classification", 2)
    bags, labels = bit_bag_pool(2048, 16, 8, 8, 1, 0)
    codes = ((bags > 0) * (1 << np.arange(8))).sum(-1)
    # The signals are exactly the codes that appear only in positive bags.
    negative_codes = set(codes[labels == 0].ravel())
    signal_codes = set(codes[labels == 1].ravel()) - negative_codes
    assert len(signal_codes) == 8
    holds_signal = np.isin(codes, list(signal_codes)).sum(1)
    np.testing.assert_array_equal(holds_signal, labels)  # one signal per positive bag, none else
    assert 0.45 < labels.mean() < 0.55
    batch = ds.batch("train", 0, 32, seed=0)
    assert batch["inputs"].shape == (32, 16, 9) and np.all(batch["inputs"][..., -1] == 1.0)
    assert set(np.unique(batch["inputs"][..., :-1])) == {-1.0, 1.0}


def test_bit_bags_splits_are_disjoint_and_fixed():
    a = build_dataset(ConfigDict({"name": "bit_bags"}))
    b = build_dataset(ConfigDict({"name": "bit_bags"}))
    assert len(a.splits["train"][1]) == 1638 and len(a.splits["valid"][1]) == 410
    np.testing.assert_array_equal(a.splits["valid"][0], b.splits["valid"][0])
    train = {row.tobytes() for row in a.splits["train"][0]}
    assert sum(row.tobytes() in train for row in a.splits["valid"][0]) == 0


def test_digit_bags_label_says_whether_the_target_digit_is_inside():
    from jaxlab.data.digits import load_digits_splits
    ds = build_dataset(ConfigDict({"name": "digit_bags", "target_digit": 3}))
    images, labels = load_digits_splits()["valid"]
    digit_of = {img.reshape(-1).tobytes(): lbl for img, lbl in zip(images, labels)}
    batch = ds.batch("valid", 5, 64, seed=1)
    assert batch["inputs"].shape == (64, 16, 65)
    for bag, label in zip(batch["inputs"], batch["targets"]):
        real = bag[bag[:, -1] == 1.0, :-1]
        assert 2 <= len(real) <= 16 and np.all(bag[bag[:, -1] == 0.0] == 0.0)
        digits = [digit_of[row.tobytes()] for row in real]  # every instance is a valid image
        assert label == (3 in digits)
    assert 0.2 < batch["targets"].mean() < 0.8


def test_bag_config_errors():
    with pytest.raises(ConfigError, match="target_digit"):
        build_dataset(ConfigDict({"name": "digit_bags", "target_digit": 12}))
    with pytest.raises(ConfigError, match="signals_per_bag"):
        build_dataset(ConfigDict({"name": "bit_bags", "signals_per_bag": 20}))
