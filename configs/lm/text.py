"""Byte-level GPT on your own UTF-8 text: one file or a folder of files (text_file dataset).

    jaxlab train --config configs/lm/text.py:path=notes.txt --workdir runs/text

Same model and schedule as configs/lm/gpt.py; prints bits per byte on the held-out split (the
last 5% of a single file, or ~5% of a folder's files by path hash) and a generated sample.
Args: path, glob (folders), seq_len, depth, width, steps, runlocal.
"""
from jaxlab.config import parse_arg
from jaxlab.config_defaults import base_config, shrink_for_cpu, transformer


def get_config(arg=None):
    arg = parse_arg(arg, path="", glob="**/*", seq_len=128, depth=4, width=128, steps=500,
                    runlocal=False)
    config = base_config()
    config.model = transformer(depth=arg.depth, width=arg.width, max_len=arg.seq_len)
    config.data.update(name="text_file", path=arg.path, glob=arg.glob, seq_len=arg.seq_len,
                       valid_fraction=0.05)
    config.optim.lr = 3e-3
    config.train.steps = arg.steps
    if arg.runlocal:
        shrink_for_cpu(config, steps=6, depth=2, width=32, num_heads=2, ffn_mult=2.0, max_len=32)
        config.data.seq_len = 32
    return config
