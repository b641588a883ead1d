"""A single text file is memory-mapped, not read whole, and still checked for UTF-8."""
import numpy as np
import pytest

from jaxlab.data import build_dataset
from jaxlab.data.text_file import UTF8_CHUNK, map_file, load_text
from jaxlab.errors import ConfigError


def test_single_file_is_memory_mapped(tmp_path):
    path = tmp_path / "big.txt"
    path.write_text("héllo wörld\n" * 500, encoding="utf-8")
    load_text.cache_clear()
    dataset = build_dataset({"name": "text_file", "path": str(path), "seq_len": 16})
    assert all(isinstance(split, np.memmap) for split in dataset.corpus.splits.values())
    batch = dataset.batch("train", 0, 4, seed=0)
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])


def test_utf8_check_spans_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr("jaxlab.data.text_file.UTF8_CHUNK", 3)  # splits every 2-byte "é"
    good = tmp_path / "good.txt"
    good.write_text("éééé", encoding="utf-8")
    assert len(map_file(str(good))) == 8
    bad = tmp_path / "bad.txt"
    bad.write_bytes("éé".encode() + b"\xff" + "é".encode())
    with pytest.raises(ConfigError, match=r"bad.txt is not valid UTF-8 text \(byte 4\)"):
        map_file(str(bad))
    assert UTF8_CHUNK > 3  # the module constant itself is untouched outside this test
