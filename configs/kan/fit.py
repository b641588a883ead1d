"""KAN function fitting: a [2, 5, 1] B-spline KAN learns exp(sin(πx) + y²) (the KAN paper's toy).

    jaxlab train --config configs/kan/fit.py --workdir runs/kan_fit

Trains in under a minute on a 2-core CPU and should end with valid_loss (the mean squared
error) near 2e-6. Other toys: `function=bessel` (J0(20x), use `widths=1-5-1`, more grid) or
`function=product` (x·y). The trainer keeps the grid fixed; grid updates and extension
(KANLinear.update_grid / extend_grid) are for hand-written loops (see tests/models/test_kan.py).
Args: function, widths (dash-separated), grid, basis, steps, runlocal.
"""
from ml_collections import ConfigDict

from jaxlab.config import parse_arg
from jaxlab.config_defaults import base_config, shrink_for_cpu


def get_config(arg=None):
    arg = parse_arg(arg, function="exp_sin_sq", widths="2-5-1", grid=10, basis="bspline",
                    steps=2000, runlocal=False)
    config = base_config()
    config.model = ConfigDict(dict(
        name="kan", widths=[int(w) for w in arg.widths.split("-")], basis=arg.basis,
        grid_size=arg.grid, order=3, grid_bound=1.0, base_activation="silu", dtype="float32"))
    config.data = ConfigDict(dict(name="function_fit", function=arg.function, num_train=1000,
                                  num_valid=1000))
    config.train.update(steps=arg.steps, batch_size=256, eval_every=500, eval_steps=4, loss="mse")
    config.optim.update(lr=1e-2, warmup_steps=50, weight_decay=0.0, final_lr_fraction=0.01)
    config.log.sample = False
    if arg.runlocal:
        shrink_for_cpu(config)
    return config
