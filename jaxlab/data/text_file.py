"""text_file: byte-level LM on a local UTF-8 text file or folder of them.

Config: path (required), glob ("**/*", folders only), seq_len (256),
valid_fraction (0.05).

- A single file is split by position: the last valid_fraction of its bytes is valid.
- A folder uses every regular file matching glob, sorted by relative path, split by
  a hash of that path (like pysrc). Paths with a hidden component (".git/...",
  ".DS_Store") are skipped, so pointing at a repository doesn't pull in git objects.
  A small folder may leave a split too short; that is an error naming the folder.

Every file must be valid UTF-8 (it catches pointing at binaries by mistake).
The corpus is read once per process and cached by (path, glob, valid_fraction).
"""
from __future__ import annotations

import codecs
import functools
import os
import pathlib

import numpy as np

from jaxlab.data.base import fraction_field, int_field
from jaxlab.data.byte_corpus import ByteCorpus, ByteWindows, file_corpus, position_corpus
from jaxlab.registry import DATASETS
from jaxlab.errors import ConfigError

UTF8_CHUNK = 1 << 24


def require_utf8(path: str, data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not valid UTF-8 text (byte {e.start}); "
                          f"data.path must name UTF-8 text files only.") from None


def map_file(path: str) -> np.ndarray:
    """The file as a read-only memory map (a large corpus is never read whole into memory),
    checked to be UTF-8 chunk by chunk."""
    try:
        if os.path.getsize(path) == 0:
            return np.zeros(0, np.uint8)
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except OSError as error:
        raise ConfigError(f"data.path {path} cannot be read ({error.strerror}); "
                          f"check its permissions.") from None
    decoder = codecs.getincrementaldecoder("utf-8")()
    for start in range(0, len(data), UTF8_CHUNK):
        carried = len(decoder.getstate()[0])  # bytes of a character cut by the last chunk
        try:
            decoder.decode(data[start:start + UTF8_CHUNK].tobytes(),
                           final=start + UTF8_CHUNK >= len(data))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not valid UTF-8 text (byte {start - carried + e.start}); "
                              f"data.path must name UTF-8 text files only.") from None
    return data


def folder_files(root: pathlib.Path, pattern: str) -> list[str]:
    """Sorted '/'-separated relative paths of non-hidden regular files matching pattern."""
    try:
        matches = list(root.glob(pattern))
    except (ValueError, NotImplementedError):  # empty or absolute patterns
        raise ConfigError(f"data.glob {pattern!r} is not a usable pattern; give a relative "
                          f"glob such as '**/*.txt'.") from None
    found = []
    for p in matches:
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            found.append(rel.as_posix())
    return sorted(found)


@functools.lru_cache(maxsize=8)
def load_text(path: str, pattern: str, valid_fraction: float) -> ByteCorpus:
    target = pathlib.Path(path)
    if target.is_file():
        data = map_file(path)
        return position_corpus(data, valid_fraction, f"file {path}")
    files = folder_files(target, pattern)
    if not files:
        raise ConfigError(f"folder {path} has no regular files matching data.glob "
                          f"{pattern!r}; point data.path at text or widen the glob.")
    return file_corpus(path, files, valid_fraction, f"folder {path}",
                       check=lambda rel, data: require_utf8(os.path.join(path, rel), data))


@DATASETS.register("text_file")
def text_file(cfg) -> ByteWindows:
    raw_path = cfg.get("path", None)
    if not raw_path:
        raise ConfigError(f"data.path is {raw_path!r}; set it to a UTF-8 text file or folder.")
    path = os.path.abspath(os.path.expanduser(str(raw_path)))
    if not os.path.exists(path):
        raise ConfigError(f"data.path {path} does not exist; set it to a UTF-8 text "
                          f"file or folder.")
    pattern = str(cfg.get("glob", "**/*"))
    seq_len = int_field(cfg, "seq_len", 256)
    valid_fraction = fraction_field(cfg, "valid_fraction", 0.05)
    corpus = load_text(path, pattern, valid_fraction)
    facts = {"path": path, "kind": "file" if os.path.isfile(path) else "folder",
             "valid_fraction": valid_fraction}
    if facts["kind"] == "folder":
        facts["glob"] = pattern
    return ByteWindows("text_file", corpus, seq_len, facts)
