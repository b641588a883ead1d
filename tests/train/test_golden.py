"""Golden metrics: the first two losses of tiny configs, recorded once, catch unintended
numeric changes (init, data order, loss, optimizer). Regenerate only on purpose, and say why
in the commit. The LM on pysrc is not pinned: its corpus is the interpreter's own stdlib."""
import jax
import numpy as np
import pytest

from jaxlab import config as config_lib
from jaxlab.train.loop import Run
from tests.train.helpers import run_steps

GOLDEN = {
    "configs/synthetic/copy.py:runlocal": [2.788867473602295, 2.7781708240509033],
    "configs/synthetic/mqar.py:runlocal": [4.1704230308532715, 4.1702399253845215],
    "configs/vision/vit_digits.py:runlocal": [2.9746363162994385, 2.21414852142334],
}


@pytest.mark.parametrize("spec", sorted(GOLDEN))
def test_first_losses_match_golden(spec):
    run = Run(config_lib.load(spec, {"mesh": [("data", 1)]}), devices=jax.devices()[:1])
    _, losses = run_steps(run, run.init(), 0, 2)
    np.testing.assert_allclose(losses, GOLDEN[spec], rtol=1e-5)

