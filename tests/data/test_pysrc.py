import sysconfig

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxlab.data import build_dataset
from jaxlab.data.byte_corpus import is_valid_file, split_by_path_hash
from jaxlab.data.pysrc import load_pysrc, stdlib_sources
from jaxlab.errors import ConfigError

ROOT = sysconfig.get_paths()["stdlib"]


@pytest.fixture(scope="module")
def files():
    return stdlib_sources(ROOT)


def test_sources_are_sorted_relative_py_files_without_site_packages(files):
    assert files == sorted(files) and len(files) > 100
    assert all(f.endswith(".py") and not f.startswith("/") for f in files)
    assert not any("site-packages/" in f or "__pycache__/" in f for f in files)
    assert "os.py" in files


def test_splits_are_disjoint_nonempty_and_about_the_configured_size(files):
    split = split_by_path_hash(files, 0.05)
    assert split["train"] and split["valid"]
    assert not set(split["train"]) & set(split["valid"])
    assert sorted(split["train"] + split["valid"]) == files
    assert 0.02 < len(split["valid"]) / len(files) < 0.10


def test_a_larger_valid_fraction_only_moves_files_into_valid(files):
    # Hash-based assignment: a file's split never depends on the other files.
    small = {f for f in files if is_valid_file(f, 0.05)}
    large = {f for f in files if is_valid_file(f, 0.2)}
    assert small < large
    assert 0.14 < len(large) / len(files) < 0.26


def test_windows_are_next_byte_pairs_from_the_right_split():
    ds = build_dataset(ConfigDict({"name": "pysrc", "seq_len": 64}))
    assert (ds.vocab_size, ds.bytes_per_token, ds.num_classes) == (256, 1.0, 0)
    out = ds.batch("valid", 3, 6, seed=1)
    np.testing.assert_array_equal(out["targets"][:, :-1], out["inputs"][:, 1:])
    assert np.all(out["weights"] == 1.0)
    valid = ds.corpus.splits["valid"].tobytes()
    for inputs, targets in zip(out["inputs"], out["targets"]):
        window = bytes(inputs.astype(np.uint8)) + bytes([targets[-1]])
        assert window in valid


def test_describe_records_the_file_list_hash(files):
    facts = build_dataset(ConfigDict({"name": "pysrc", "seq_len": 8})).describe()
    assert len(facts["file_list_sha256"]) == 64
    assert facts["files"]["train"] + facts["files"]["valid"] == len(files)
    assert facts["files"]["valid"] > 0
    corpus = load_pysrc(ROOT, 0.05)
    assert facts["bytes"] == {s: len(corpus.splits[s]) for s in ("train", "valid")}
    assert facts["stdlib"].startswith("python3")


def test_corpus_is_loaded_once():
    cfg = ConfigDict({"name": "pysrc", "seq_len": 8})
    assert build_dataset(cfg).corpus is build_dataset(cfg).corpus


@pytest.mark.parametrize("fields", [{"valid_fraction": 0.0}, {"valid_fraction": 1.5},
                                    {"seq_len": 0}, {"seq_len": "64"}])
def test_bad_fields_are_config_errors_naming_the_value(fields):
    (key, value), = fields.items()
    with pytest.raises(ConfigError, match=f"data.{key}.*{value!r}"):
        build_dataset(ConfigDict({"name": "pysrc", **fields}))
