import re

import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxlab.data import build_dataset
from jaxlab.errors import ConfigError

TEXT = "".join(f"Zeile {i}: naïve café — ok\n" for i in range(300))


def make(path, **fields):
    return build_dataset(ConfigDict({"name": "text_file", "path": str(path), **fields}))


def test_single_file_is_split_by_position(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(TEXT, encoding="utf-8")
    ds = make(path, seq_len=16, valid_fraction=0.1)
    raw = TEXT.encode("utf-8")
    cut = len(raw) - round(len(raw) * 0.1)
    assert ds.corpus.splits["train"].tobytes() == raw[:cut]
    assert ds.corpus.splits["valid"].tobytes() == raw[cut:]
    out = ds.batch("train", 0, 4, seed=0)
    np.testing.assert_array_equal(out["targets"][:, :-1], out["inputs"][:, 1:])
    for row in out["inputs"]:
        assert bytes(row.astype(np.uint8)) in raw[:cut]
    assert ds.describe()["kind"] == "file" and ds.bytes_per_token == 1.0


def test_folder_is_split_by_file_and_respects_glob(tmp_path):
    for i in range(40):
        (tmp_path / f"sub{i % 3}").mkdir(exist_ok=True)
        (tmp_path / f"sub{i % 3}" / f"doc{i:02d}.txt").write_text(f"document {i} " * 20)
    (tmp_path / "notes.md").write_text("markdown " * 50)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "index").write_bytes(b"\xff\xfe binary")
    ds = make(tmp_path, seq_len=8, valid_fraction=0.3, glob="**/*.txt")
    facts = ds.describe()
    assert facts["files"]["train"] + facts["files"]["valid"] == 40
    assert facts["files"]["train"] > 0 and facts["files"]["valid"] > 0
    train, valid = (ds.corpus.splits[s].tobytes().decode() for s in ("train", "valid"))
    train_docs = set(re.findall(r"document (\d+)", train))
    valid_docs = set(re.findall(r"document (\d+)", valid))
    assert not train_docs & valid_docs and len(train_docs | valid_docs) == 40
    assert "markdown" not in train + valid
    # The default glob takes every non-hidden file, so the .git file is skipped.
    everything = make(tmp_path, seq_len=8, valid_fraction=0.3).describe()["files"]
    assert everything["train"] + everything["valid"] == 41


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        make(missing)


def test_path_is_required():
    with pytest.raises(ConfigError, match="data.path"):
        build_dataset(ConfigDict({"name": "text_file"}))


def test_invalid_utf8_names_the_file(tmp_path):
    (tmp_path / "good.txt").write_text(TEXT)
    (tmp_path / "bad.bin").write_bytes(b"ok\xc3\x28 not utf-8")
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "bad.bin"))):
        make(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "bad.bin"))):
        make(tmp_path / "bad.bin")


def test_too_short_corpus_is_a_config_error(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("short text")
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ".*seq_len"):
        make(path, seq_len=64)


@pytest.mark.parametrize("make_empty", ["file", "folder"])
def test_empty_corpus_is_a_config_error(tmp_path, make_empty):
    path = tmp_path / "empty"
    if make_empty == "file":
        path.write_text("")
    else:
        path.mkdir()
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        make(path, seq_len=4)
