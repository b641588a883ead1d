"""Multiple-instance learning on bit-pattern bags or digit bags, for comparing bag poolings.

    jaxlab train --config configs/mil/pooling.py:bags=digits --workdir runs/mil_pooling_digits

The model is the MIL classifier of configs/mil/bit_bags.py and configs/mil/digit_bags.py
(instance MLP + HopfieldPooling); its data group holds the fields of both bag datasets so that
`data.name` (bit_bags or digit_bags) and `model.features` (8 or 64) can be switched by
overrides, as the hopfield reproduction's rows do. `model.pooling` picks hopfield (default),
mean or max; the Hopfield pooling is tuned through the layer itself: `model.update_steps_max` (0 = one softmax-attention step with a learned query,
>0 = further Hopfield updates) and `model.scaling` (β; 0 = 1/√d_k, a tiny β pools the
uniform average of the bag). With bags=digits it trains in under a minute on a 2-core CPU and
should end above 0.9 valid accuracy (the hopfield reproduction saw 0.97 after 300 steps).
Args: bags (bits|digits), width, heads, update_steps, steps, runlocal.
"""
from ml_collections import ConfigDict

from jaxlab.config import parse_arg
from jaxlab.config_defaults import base_config, shrink_for_cpu
from jaxlab.errors import ConfigError

FEATURES = {"bits": 8, "digits": 64}


def get_config(arg=None):
    arg = parse_arg(arg, bags="digits", width=32, heads=4, update_steps=3, steps=400,
                    runlocal=False)
    if arg.bags not in FEATURES:
        raise ConfigError(f"arg bags={arg.bags!r} is not valid; valid: {', '.join(FEATURES)}")
    config = base_config()
    config.model = ConfigDict(dict(
        name="mil", features=FEATURES[arg.bags], width=arg.width, instance_layers=2,
        num_heads=arg.heads, hidden_size=0, update_steps_max=arg.update_steps, scaling=0.0,
        quantity=1, normalize=True, num_classes=2, dtype="float32", pooling="hopfield"))
    config.data = ConfigDict(dict(
        name="bit_bags" if arg.bags == "bits" else "digit_bags", bag_size=16,
        # bit_bags
        num_bags=2048, num_bits=8, num_signals=8, signals_per_bag=1, valid_fraction=0.2,
        # digit_bags
        target_digit=9, mean_bag_size=10, positive_fraction=0.5))
    config.train.update(steps=arg.steps, batch_size=32, eval_every=arg.steps, eval_steps=8)
    config.optim.update(lr=1e-3, warmup_steps=30, weight_decay=0.01)
    config.log.sample = False
    if arg.runlocal:
        shrink_for_cpu(config, width=16)
    return config
