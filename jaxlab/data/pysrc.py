"""pysrc: byte-level LM on the installed Python standard library's .py sources.

Always available, no download. The whole stdlib is used (test/ and idlelib/
included: about 1.8k files, 31 MB, read in well under a second), minus
site-packages/dist-packages (third-party code varies between machines) and
__pycache__. Distributions that strip the stdlib's test suite give a smaller
corpus; describe() records file counts and hashes so that shows up in env.json.

Config: seq_len (256), valid_fraction (0.05).
"""
from __future__ import annotations

import functools
import os
import sys
import sysconfig

from jaxlab.data.base import fraction_field, int_field
from jaxlab.data.byte_corpus import ByteCorpus, ByteWindows, file_corpus
from jaxlab.registry import DATASETS

_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_sources(root: str) -> list[str]:
    """Sorted '/'-separated paths of the .py files under root, relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
        rel_dir = os.path.relpath(dirpath, root)
        for filename in filenames:
            if filename.endswith(".py"):
                rel = filename if rel_dir == "." else os.path.join(rel_dir, filename)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


@functools.lru_cache(maxsize=4)
def load_pysrc(root: str, valid_fraction: float) -> ByteCorpus:
    # Cached: every dataset built in this process shares one copy of the bytes.
    return file_corpus(root, stdlib_sources(root), valid_fraction,
                       origin=f"the Python stdlib at {root}")


@DATASETS.register("pysrc")
def pysrc(cfg) -> ByteWindows:
    seq_len = int_field(cfg, "seq_len", 256)
    valid_fraction = fraction_field(cfg, "valid_fraction", 0.05)
    root = sysconfig.get_paths()["stdlib"]
    facts = {"stdlib": os.path.basename(root), "python_version": sys.version.split()[0],
             "valid_fraction": valid_fraction}
    return ByteWindows("pysrc", load_pysrc(root, valid_fraction), seq_len, facts)
