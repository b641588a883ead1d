"""Multi-query associative recall (MQAR) with a small softmax-attention LM.

    jaxlab train --config configs/synthetic/mqar.py --workdir runs/mqar

Reports accuracy on the answer tokens only (the loss weights mark them); a 2-layer softmax
Transformer should approach 1.0. Args: pairs, seq_len, vocab, depth, width, steps, runlocal.
"""
from jaxlab.config import parse_arg
from jaxlab.config_defaults import base_config, shrink_for_cpu, transformer


def get_config(arg=None):
    arg = parse_arg(arg, pairs=8, seq_len=64, vocab=64, depth=2, width=64, steps=2000,
                    runlocal=False)
    config = base_config()
    config.model = transformer(depth=arg.depth, width=arg.width, num_heads=4,
                               vocab_size=arg.vocab, max_len=arg.seq_len)
    config.data.update(name="mqar", seq_len=arg.seq_len, vocab_size=arg.vocab, num_pairs=arg.pairs)
    config.train.update(steps=arg.steps, batch_size=64, eval_every=250, eval_steps=4)
    config.optim.update(lr=1e-3, warmup_steps=100)
    config.log.sample = False
    if arg.runlocal:
        shrink_for_cpu(config, depth=1, width=32)
    return config
