"""digits: scikit-learn's bundled 8x8 handwritten digits (1797 images, no download).

The train/valid split is fixed (a seed-0 permutation, last 20% valid) so every
run, whatever its seed, evaluates on the same images. Both splits are sampled
with replacement by the batch rng: simple, and valid loss over a few batches is
an unbiased estimate (not an exact pass over the split).
"""
from __future__ import annotations

import functools

import numpy as np

from jaxlab.data.base import SampledArrays
from jaxlab.registry import DATASETS

VALID_FRACTION = 0.2


@functools.lru_cache(maxsize=1)
def load_digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    # Imported here: sklearn takes most of a second to import and only this dataset needs it.
    from sklearn.datasets import load_digits
    raw = load_digits()
    images = (raw.images / 16.0).astype(np.float32)[..., None]
    labels = raw.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(labels))
    num_valid = int(round(len(labels) * VALID_FRACTION))
    split_ids = {"train": order[:-num_valid], "valid": order[-num_valid:]}
    return {name: (images[ids], labels[ids]) for name, ids in split_ids.items()}


@DATASETS.register("digits")
class Digits(SampledArrays):
    name = "digits"
    task = "classification"
    num_classes = 10

    def __init__(self, cfg=None):
        self.splits = load_digits_splits()

    def example_spec(self):
        return {"inputs": ((8, 8, 1), np.dtype(np.float32)),
                "targets": ((), np.dtype(np.int32)),
                "weights": ((), np.dtype(np.float32))}

    def source_facts(self):
        import sklearn
        return {"source": "sklearn.datasets.load_digits", "sklearn_version": sklearn.__version__,
                "examples": {name: int(len(lbl)) for name, (_, lbl) in self.splits.items()}}
