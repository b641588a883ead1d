"""Multiple-instance learning on bags of 8×8 digits: is there a 9 in the bag?

    jaxlab train --config configs/mil/digit_bags.py --workdir runs/mil_digit_bags

Bags of about 10 digits (padded to 16, the padding masked out of the pooling) are positive iff
they hold a `target` digit. An MLP embeds each image and HopfieldPooling (one learned state
pattern, 4 heads) pools the bag. Trains in about a minute on a 2-core CPU and should end above
0.9 valid accuracy.
Args: target, width, heads, update_steps, steps, runlocal.
"""
from ml_collections import ConfigDict

from jaxlab.config import parse_arg
from jaxlab.config_defaults import base_config, shrink_for_cpu


def get_config(arg=None):
    arg = parse_arg(arg, target=9, width=64, heads=4, update_steps=0, steps=1000, runlocal=False)
    config = base_config()
    config.model = ConfigDict(dict(
        name="mil", features=64, width=arg.width, instance_layers=2, num_heads=arg.heads,
        hidden_size=0, update_steps_max=arg.update_steps, scaling=0.0, quantity=1,
        normalize=True, num_classes=2, dtype="float32"))
    config.data = ConfigDict(dict(name="digit_bags", target_digit=arg.target, mean_bag_size=10,
                                  bag_size=16, positive_fraction=0.5))
    config.train.update(steps=arg.steps, batch_size=32, eval_every=250, eval_steps=8)
    config.optim.update(lr=1e-3, warmup_steps=50, weight_decay=0.01)
    config.log.sample = False
    if arg.runlocal:
        shrink_for_cpu(config, width=16)
    return config
