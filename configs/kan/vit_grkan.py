"""Kolmogorov-Arnold Transformer (KAT) on 8×8 digits: the ViT with group-rational FFNs.

    jaxlab train --config configs/kan/vit_grkan.py --workdir runs/kan_vit_grkan

Each FFN is rational(identity) → linear → rational(gelu) → linear with 8 channel groups
(`model.ffn=grkan`). Trains in about a minute on a 2-core CPU and should end above 0.9 valid
accuracy, like configs/vision/vit_digits.py with the plain MLP.
Args: depth, width, init (gelu or silu), steps, runlocal.
"""
from jaxlab.config import parse_arg
from jaxlab.config_defaults import base_config, shrink_for_cpu, transformer


def get_config(arg=None):
    arg = parse_arg(arg, depth=2, width=64, init="gelu", steps=600, runlocal=False)
    config = base_config()
    config.model = transformer(name="vit", depth=arg.depth, width=arg.width, num_heads=4,
                               causal=False, position="learned", image_size=8, patch_size=2,
                               channels=1, num_classes=10, max_len=16, ffn_mult=2.0,
                               ffn="grkan", grkan_init=arg.init, grkan_groups=8)
    config.data.name = "digits"
    config.train.update(steps=arg.steps, batch_size=64, eval_every=200, eval_steps=8)
    config.optim.update(lr=2e-3, warmup_steps=30, weight_decay=0.05)
    config.log.sample = False
    if arg.runlocal:
        shrink_for_cpu(config, depth=1, width=32)
    return config
