"""Byte-level GPT on the Python standard library sources (pysrc): the default experiment.

    jaxlab train --config configs/lm/gpt.py --workdir runs/lm_gpt   # what plain `jaxlab train` runs

On a 2-core CPU it runs in about 3 minutes and ends near 1.95 valid bits per byte, with a short
generated sample. Args: depth, width, heads, kv_heads, seq_len, steps, batch, runlocal (a
seconds-long smoke run), e.g. `configs/lm/gpt.py:depth=6,width=256`.
"""
from jaxlab.config import parse_arg
from jaxlab.config_defaults import base_config, shrink_for_cpu, transformer


def get_config(arg=None):
    arg = parse_arg(arg, depth=4, width=128, heads=4, kv_heads=0, seq_len=128, steps=500,
                    batch=32, runlocal=False)
    config = base_config()
    config.model = transformer(depth=arg.depth, width=arg.width, num_heads=arg.heads,
                               num_kv_heads=arg.kv_heads, max_len=arg.seq_len)
    config.data.name = "pysrc"
    config.data.seq_len = arg.seq_len
    config.optim.lr = 3e-3
    config.train.steps = arg.steps
    config.train.batch_size = arg.batch
    if arg.runlocal:
        shrink_for_cpu(config, steps=6, depth=2, width=32, num_heads=2, ffn_mult=2.0, max_len=32)
        config.data.seq_len = 32
    return config
