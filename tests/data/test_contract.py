"""The Dataset contract, checked on every registered dataset."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxlab.data import SPLITS, build_dataset
from jaxlab.errors import ConfigError
from jaxlab.registry import DATASETS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def text_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(400)))
    return str(path)


def make(name, **fields):
    return build_dataset(ConfigDict({"name": name, **fields}))


CONFIGS = {
    "pysrc": dict(seq_len=32),
    "mqar": dict(seq_len=40, num_pairs=6),
    "copy": dict(seq_len=20),
    "digits": dict(),
    "text_file": dict(seq_len=16),
    "icl_regression": dict(x_dim=3, num_examples=6),
    "bit_bags": dict(num_bags=200),
    "digit_bags": dict(),
    "function_fit": dict(num_train=100, num_valid=50),
    "tabular": dict(source="wine"),
}


@pytest.fixture(params=sorted(CONFIGS))
def dataset(request, text_path):
    fields = dict(CONFIGS[request.param])
    if request.param == "text_file":
        fields["path"] = text_path
    return make(request.param, **fields)


def test_every_registered_dataset_is_covered():
    assert set(DATASETS.names()) == set(CONFIGS)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def differs(a, b):
    return any(not np.array_equal(a[k], b[k]) for k in a)


def test_batch_is_a_pure_function_of_its_arguments(dataset):
    call = dict(split="train", step=7, batch_size=8, seed=3)
    first = dataset.batch(**call)
    assert_same(first, dataset.batch(**call))
    assert differs(first, dataset.batch(**{**call, "step": 8}))
    assert differs(first, dataset.batch(**{**call, "seed": 4}))
    assert differs(first, dataset.batch(**{**call, "split": "valid"}))


def test_process_shares_partition_the_global_batch(dataset):
    whole = dataset.batch("train", 5, 12, seed=0)
    shares = [dataset.batch("train", 5, 12, seed=0, process_index=i, process_count=3)
              for i in range(3)]
    assert all(len(s["targets"]) == 4 for s in shares)
    assert differs(shares[0], shares[1])
    # Same global batch whatever the process count, so resuming on a different
    # number of hosts replays the same data.
    assert_same(whole, {k: np.concatenate([s[k] for s in shares]) for k in whole})


def test_batch_matches_example_spec(dataset):
    out = dataset.batch("valid", 0, 4, seed=0)
    for key, (shape, dtype) in dataset.example_spec().items():
        assert out[key].shape == (4, *shape)
        assert out[key].dtype == dtype
    if dataset.task == "lm":
        assert dataset.vocab_size > 0 and dataset.num_classes == 0
        assert 0 <= out["inputs"].min() and out["inputs"].max() < dataset.vocab_size
        assert 0 <= out["targets"].min() and out["targets"].max() < dataset.vocab_size
        assert set(np.unique(out["weights"])) <= {0.0, 1.0}
        assert out["weights"].sum() > 0
    elif dataset.task == "regression":
        assert out["targets"].dtype == np.float32 and np.all(np.isfinite(out["inputs"]))
    else:
        assert dataset.task == "classification" and dataset.num_classes > 0


def test_describe_is_json(dataset):
    facts = json.loads(json.dumps(dataset.describe()))
    assert facts["task"] == dataset.task


@pytest.mark.parametrize("split", ["test", "validation", "", None])
def test_bad_split_is_a_config_error(dataset, split):
    with pytest.raises(ConfigError, match="train, valid"):
        dataset.batch(split, 0, 4, seed=0)


def test_indivisible_batch_is_a_config_error(dataset):
    with pytest.raises(ConfigError, match="not divisible by process_count 3"):
        dataset.batch("train", 0, 10, seed=0, process_index=0, process_count=3)


@pytest.mark.parametrize("bad", [dict(seed=-1), dict(step=-2), dict(batch_size=0),
                                 dict(process_index=2, process_count=2)])
def test_bad_batch_arguments_are_config_errors(dataset, bad):
    call = {**dict(split="train", step=0, batch_size=4, seed=0), **bad}
    with pytest.raises(ConfigError):
        dataset.batch(**call)


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ConfigError, match="pysrc"):
        make("imagenet")


def test_missing_name_lists_known_names():
    with pytest.raises(ConfigError, match="mqar"):
        build_dataset(ConfigDict({"seq_len": 8}))


def test_same_batch_in_a_fresh_process_with_another_hash_seed():
    # Resuming happens in a new process: nothing may depend on per-process
    # state such as Python's salted str hash.
    code = ("import hashlib; from ml_collections import ConfigDict; "
            "from jaxlab.data import build_dataset; "
            "b = build_dataset(ConfigDict({'name': 'pysrc', 'seq_len': 32}))"
            ".batch('valid', 11, 8, seed=5); "
            "print(hashlib.sha256(b['inputs'].tobytes()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": ROOT}
    child = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True)
    here = make("pysrc", seq_len=32).batch("valid", 11, 8, seed=5)
    assert child.stdout.strip() == hashlib.sha256(here["inputs"].tobytes()).hexdigest()


def test_splits_constant():
    assert SPLITS == ("train", "valid")
