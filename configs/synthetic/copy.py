"""Copy task: reproduce a random token string after a separator.

    jaxlab train --config configs/synthetic/copy.py --workdir runs/copy

Accuracy is measured on the copied half only. Args: seq_len, vocab, depth, width, steps, runlocal.
"""
from jaxlab.config import parse_arg
from jaxlab.config_defaults import base_config, shrink_for_cpu, transformer


def get_config(arg=None):
    arg = parse_arg(arg, seq_len=32, vocab=16, depth=2, width=64, steps=1500, runlocal=False)
    config = base_config()
    config.model = transformer(depth=arg.depth, width=arg.width, num_heads=4,
                               vocab_size=arg.vocab, max_len=arg.seq_len)
    config.data.update(name="copy", seq_len=arg.seq_len, vocab_size=arg.vocab)
    config.train.update(steps=arg.steps, batch_size=64, eval_every=250, eval_steps=4)
    config.optim.update(lr=1e-3, warmup_steps=100)
    config.log.sample = False
    if arg.runlocal:
        shrink_for_cpu(config, depth=1, width=32)
    return config
