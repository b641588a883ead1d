"""A model trained with `model.kernels=interpret` (the Pallas kernels, interpreted) follows the
one trained with `model.kernels=xla` step for step."""
import jax
import numpy as np
import pytest

from jaxlab import config as config_lib
from jaxlab.errors import ConfigError
from jaxlab.kernels import last_path
from jaxlab.train.loop import Run
from tests.kernels.helpers import KERNEL_IMPL
from tests.train.helpers import run_steps


def three_steps(**overrides):
    config = config_lib.load("configs/lm/gpt.py:runlocal", {"mesh": [("data", 1)], **overrides})
    run = Run(config, jax.devices()[:1])
    return run_steps(run, run.init(), 0, 3)


@pytest.mark.parametrize("model", [
    {"model.norm": "rmsnorm"},
    {"model.norm": "layernorm", "model.attention": "linear", "model.chunk_size": 16},
    {"model.norm": "rmsnorm", "model.attention": "softplus"},
], ids=["softmax+rmsnorm", "linear+layernorm", "lssa+rmsnorm"])
def test_interpreted_kernels_train_like_xla(model):
    state_xla, losses_xla = three_steps(**model, **{"model.kernels": "xla"})
    state_kernel, losses_kernel = three_steps(**model, **{"model.kernels": KERNEL_IMPL})
    assert last_path("fused_norm") == KERNEL_IMPL
    linear = model.get("model.attention") == "linear"
    assert last_path("chunked_linear_attention" if linear else "fused_norm_attention") == KERNEL_IMPL
    np.testing.assert_allclose(losses_kernel, losses_xla, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 state_kernel["params"], state_xla["params"])
    assert losses_kernel[-1] < losses_kernel[0]


def test_unknown_kernel_setting():
    with pytest.raises(ConfigError, match="kernel implementation 'fast' is unknown"):
        three_steps(**{"model.kernels": "fast"})


@pytest.mark.parametrize("attention", ["softmax", "softplus"])
def test_mosaic_attention_kernels_train_like_xla(attention):
    """model.attention_gpu_kernel=mosaic: the Hopper kernels, in Mosaic GPU's interpreter on a
    CPU (jax ≥ 0.11), in a bfloat16 GPT with head dim 64 (softplus: LSSA). Batch 2: the
    interpreter's time grows with the kernels' programs (batch × heads × query blocks); with
    the runlocal batch of 16 a case took 100 s, with 2 it takes 19."""
    from jaxlab.kernels.norm_attention import mosaic_gpu
    if not mosaic_gpu.available():
        pytest.skip(f"Mosaic GPU needs jax ≥ 0.11, this is {jax.__version__}")
    model = {"model.width": 128, "model.num_heads": 2, "model.depth": 1,
             "model.dtype": "bfloat16", "model.attention": attention,
             "model.attention_gpu_kernel": "mosaic", "train.batch_size": 2}
    _, losses_xla = three_steps(**model, **{"model.kernels": "xla"})
    _, losses_kernel = three_steps(**model, **{"model.kernels": KERNEL_IMPL})
    assert last_path("fused_norm_attention") == KERNEL_IMPL
    np.testing.assert_allclose(losses_kernel, losses_xla, rtol=1e-3)
    assert losses_kernel[-1] < losses_kernel[0]


def test_unknown_attention_gpu_kernel():
    with pytest.raises(ConfigError, match="model.attention_gpu_kernel 'cutlass' is unknown"):
        three_steps(**{"model.attention_gpu_kernel": "cutlass"})
