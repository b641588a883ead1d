import numpy as np
from ml_collections import ConfigDict

from jaxlab.data import build_dataset
from jaxlab.data.digits import load_digits_splits


def test_digits_batches_are_scaled_images_with_digit_labels():
    ds = build_dataset(ConfigDict({"name": "digits"}))
    assert (ds.task, ds.num_classes, ds.bytes_per_token) == ("classification", 10, None)
    out = ds.batch("train", 0, 64, seed=0)
    assert out["inputs"].shape == (64, 8, 8, 1) and out["inputs"].dtype == np.float32
    assert 0.0 <= out["inputs"].min() and out["inputs"].max() <= 1.0
    assert out["inputs"].max() > 0.5  # scaled by 16, not by 255
    assert out["targets"].dtype == np.int32 and set(out["targets"]) <= set(range(10))
    assert np.all(out["weights"] == 1.0)


def test_digits_splits_are_disjoint_fixed_and_cover_the_set():
    splits = load_digits_splits()
    train, valid = (splits[s][0].reshape(len(splits[s][0]), -1) for s in ("train", "valid"))
    assert len(train) + len(valid) == 1797 and 340 <= len(valid) <= 380
    seen = {row.tobytes() for row in train}
    # A handful of digits images are exact duplicates; almost all valid ones are unseen.
    assert sum(row.tobytes() in seen for row in valid) <= 5
    assert set(splits["valid"][1]) == set(range(10))


def test_valid_batches_come_from_the_valid_split():
    ds = build_dataset(ConfigDict({"name": "digits"}))
    valid = {row.tobytes() for row in ds.splits["valid"][0]}
    out = ds.batch("valid", 4, 32, seed=9)
    assert all(image.tobytes() in valid for image in out["inputs"])
