"""Byte-level language modelling over a corpus of files: shared by pysrc and text_file.

A corpus is two uint8 arrays (train, valid). Files go to a split by a hash of
their relative path, so adding or removing one file never moves the others
between splits. A batch is random windows of seq_len + 1 bytes from the split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable, Sequence

import numpy as np

from jaxlab.data.base import SPLITS, Dataset, lm_spec
from jaxlab.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ByteCorpus:
    splits: dict[str, np.ndarray]  # split name -> uint8 array of the split's bytes
    facts: dict[str, Any]          # JSON-serialisable provenance for describe()
    origin: str                    # how errors name the corpus, e.g. "file /x/y.txt"


def is_valid_file(relative_path: str, valid_fraction: float) -> bool:
    # sha256 rather than hash(): Python's str hash is salted per process.
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < valid_fraction


def split_by_path_hash(relative_paths: Sequence[str], valid_fraction: float
                       ) -> dict[str, list[str]]:
    valid = [p for p in relative_paths if is_valid_file(p, valid_fraction)]
    valid_set = set(valid)
    return {"train": [p for p in relative_paths if p not in valid_set], "valid": valid}


def concat_files(root: str, relative_paths: Sequence[str],
                 check: Callable[[str, bytes], None] | None = None) -> np.ndarray:
    """All files' bytes, newline-separated, as one read-only uint8 array."""
    chunks = []
    for rel in relative_paths:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        if check is not None:
            check(rel, data)
        chunks.append(data)
    return np.frombuffer(b"\n".join(chunks), dtype=np.uint8)


def file_corpus(root: str, relative_paths: Sequence[str], valid_fraction: float,
                origin: str, check: Callable[[str, bytes], None] | None = None,
                ) -> ByteCorpus:
    """A corpus of the files under `root`, split by path hash."""
    by_split = split_by_path_hash(sorted(relative_paths), valid_fraction)
    splits = {name: concat_files(root, by_split[name], check) for name in SPLITS}
    listing = "\n".join(sorted(relative_paths)).encode("utf-8")
    facts = {"files": {name: len(by_split[name]) for name in SPLITS},
             "file_list_sha256": hashlib.sha256(listing).hexdigest()}
    return ByteCorpus(splits, {**facts, **_byte_facts(splits)}, origin)


def position_corpus(data: np.ndarray, valid_fraction: float, origin: str) -> ByteCorpus:
    """One file split by position: the last valid_fraction of its bytes is valid."""
    cut = len(data) - int(round(len(data) * valid_fraction))
    splits = {"train": data[:cut], "valid": data[cut:]}
    return ByteCorpus(splits, _byte_facts(splits), origin)


def _byte_facts(splits: dict[str, np.ndarray]) -> dict[str, Any]:
    content = hashlib.sha256()
    for name in SPLITS:
        content.update(memoryview(np.ascontiguousarray(splits[name])))  # no copy of a memmap
    return {"bytes": {name: int(len(splits[name])) for name in SPLITS},
            "content_sha256": content.hexdigest()}


class ByteWindows(Dataset):
    """Next-byte prediction on random windows of a ByteCorpus."""
    task = "lm"
    vocab_size = 256
    bytes_per_token = 1.0

    def __init__(self, name: str, corpus: ByteCorpus, seq_len: int,
                 extra_facts: dict[str, Any] | None = None):
        total = sum(len(a) for a in corpus.splits.values())
        if total == 0:
            raise ConfigError(f"{corpus.origin} is empty; point data.path at text with at "
                              f"least {seq_len + 1} bytes in each split.")
        for split, data in corpus.splits.items():
            if len(data) < seq_len + 1:
                raise ConfigError(
                    f"the {split} split of {corpus.origin} has {len(data)} bytes, fewer than "
                    f"data.seq_len + 1 = {seq_len + 1}; use more text, a smaller seq_len "
                    f"or another data.valid_fraction.")
        self.name = name
        self.corpus = corpus
        self.seq_len = seq_len
        self._extra_facts = dict(extra_facts or {})

    def example_spec(self):
        return lm_spec(self.seq_len)

    def _make_rows(self, split, rng, batch_size, rows):
        data = self.corpus.splits[split]
        window = self.seq_len + 1
        starts = rng.integers(0, len(data) - window + 1, size=batch_size)[rows]
        tokens = data[starts[:, None] + np.arange(window)].astype(np.int32)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                "weights": np.ones((len(starts), self.seq_len), np.float32)}

    def source_facts(self):
        return {"seq_len": self.seq_len, **self._extra_facts, **self.corpus.facts}
