"""`model.scan_layers`: one lax.scan over stacked blocks computes what the per-layer loop does."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab import config as config_lib
from jaxlab.analysis import depth
from jaxlab.cli import main
from jaxlab.errors import ConfigError
from jaxlab.models.decoding import generate
from jaxlab.models.scan import ScannedBlocks, stack_layers, unstack_layers
from jaxlab.models.transformer import DecoderLM
from jaxlab.train.loop import Run
from jaxlab.train.metrics import read_jsonl
from tests.train.helpers import run_steps

TINY = "configs/lm/gpt.py:runlocal"


def model_cfg(**overrides):
    cfg = config_lib.load(TINY).model
    cfg.update({"depth": 3, **overrides})
    return cfg


def both_layouts(**overrides):
    """The same seed in both layouts: blocks are built one by one either way."""
    loop = DecoderLM(model_cfg(**overrides), rngs=nnx.Rngs(0))
    scan = DecoderLM(model_cfg(scan_layers=True, **overrides), rngs=nnx.Rngs(0))
    return loop, scan


def tokens(batch=2, length=16, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, 256)


def params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def assert_trees_close(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def loss_and_grads(model, tokens_bt):
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)

    def loss(state):
        logits = nnx.merge(graphdef, state, rest)(tokens_bt[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                             tokens_bt[:, 1:, None], -1))
    value, grads = jax.jit(jax.value_and_grad(loss))(state)
    return value, nnx.to_pure_dict(grads)


def test_params_are_stacked_per_layer():
    loop, scan = both_layouts()
    assert isinstance(scan.blocks, ScannedBlocks)
    stacked = params(scan)["blocks"]["layers"]
    per_layer = params(loop)["blocks"]
    assert stacked["attention"]["sublayer"]["q"]["kernel"].shape == (3, 32, 32)
    expected = jax.tree.map(lambda *xs: jnp.stack(xs), *[per_layer[i] for i in range(3)])
    assert_trees_close(stacked, expected, rtol=0, atol=0)
    q = nnx.state(scan, nnx.Param)["blocks"]["layers"]["attention"]["sublayer"]["q"]["kernel"]
    assert q.get_metadata()["axes"] == ("layers", "embed", "heads")


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
@pytest.mark.parametrize("norm_position", ["pre", "peri"])
def test_same_logits_and_gradients_as_the_loop(remat, norm_position):
    loop, scan = both_layouts(remat=remat, norm_position=norm_position)
    tokens_bt = tokens()
    np.testing.assert_allclose(scan(tokens_bt), loop(tokens_bt), rtol=1e-5, atol=1e-5)
    loss_loop, grads_loop = loss_and_grads(loop, tokens_bt)
    loss_scan, grads_scan = loss_and_grads(scan, tokens_bt)
    np.testing.assert_allclose(loss_scan, loss_loop, rtol=1e-6)
    if norm_position == "peri":  # block 0's embedding norm moves out of the stack
        assert_trees_close(grads_scan["blocks"]["embedding_norm"],
                           grads_loop["blocks"][0].pop("embedding_norm"), rtol=1e-5, atol=1e-6)
    stacked_loop = jax.tree.map(lambda *xs: jnp.stack(xs),
                                *[grads_loop["blocks"][i] for i in range(3)])
    assert_trees_close(grads_scan["blocks"]["layers"], stacked_loop, rtol=1e-5, atol=1e-6)
    for name in ("embed", "final_norm"):
        assert_trees_close(grads_scan[name], grads_loop[name], rtol=1e-5, atol=1e-6)


def test_layout_conversion_round_trips():
    loop, scan = both_layouts(norm_position="peri")
    assert_trees_close(params(stack_layers(loop)), params(scan), rtol=0, atol=0)
    back = unstack_layers(scan)
    assert_trees_close(params(back), params(loop), rtol=0, atol=0)
    assert back.blocks[0].embedding_norm is not None and back.blocks[1].embedding_norm is None
    assert isinstance(scan.blocks, ScannedBlocks)  # conversions copy; the input is untouched
    with pytest.raises(TypeError, match="unstack_layers"):
        list(scan.blocks)


def test_traced_size_does_not_grow_with_depth():
    def equations(depth):
        model = DecoderLM(model_cfg(depth=depth, scan_layers=True), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        jaxpr = jax.make_jaxpr(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens())
        return len(jaxpr.jaxpr.eqns)
    assert equations(2) == equations(8)


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_cached_decoding_matches(attention):
    loop, scan = both_layouts(attention=attention)
    prompt = tokens(length=5)
    np.testing.assert_array_equal(generate(scan, prompt, 6), generate(loop, prompt, 6))
    assert "cache" not in str(nnx.state(scan))  # the caller's model never gains a cache


def test_depth_diagnostics_read_a_scanned_model():
    loop, scan = both_layouts()
    batch = {"inputs": tokens()[:, :-1], "targets": tokens()[:, 1:]}
    got, want = depth.depth_report(scan, batch), depth.depth_report(loop, batch)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6)


def test_running_statistics_move_inside_the_scan():
    """PRepBN keeps running statistics ("extra"); the scan carries them out per layer."""
    overrides = {"mesh": [("data", 1)], "model.norm": "prepbn", "optim.weight_decay": 0.0}
    devices = jax.devices()[:1]
    loop = Run(config_lib.load(TINY, overrides), devices)
    scan = Run(config_lib.load(TINY, {**overrides, "model.scan_layers": True}), devices)
    state_loop, losses_loop = run_steps(loop, loop.init(), 0, 2)
    state_scan, losses_scan = run_steps(scan, scan.init(), 0, 2)
    np.testing.assert_allclose(losses_scan, losses_loop, rtol=1e-5)
    extra_loop = state_loop["extra"]["blocks"]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[extra_loop[i] for i in sorted(extra_loop)])
    assert_trees_close(state_scan["extra"]["blocks"]["layers"], stacked, rtol=1e-5, atol=1e-6)
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                         scan.init()["extra"], state_scan["extra"]))
    assert any(moved)


def test_eight_device_fsdp_mesh_trains_like_the_loop():
    # With weight decay on: the stacked layer axis does not make norm scales decay.
    overrides = {"mesh": [("data", 2), ("fsdp", 4)], "optim.weight_decay": 0.1}
    loop = Run(config_lib.load(TINY, overrides))
    scan = Run(config_lib.load(TINY, {**overrides, "model.scan_layers": True}))
    assert scan.mesh.devices.size == 8
    kernel = scan.shardings["params"]["blocks"]["layers"]["ffn"]["sublayer"]["up"]["kernel"]
    assert tuple(kernel.spec)[:2] == (None, "fsdp")  # the layer axis stays whole
    state_loop, losses_loop = run_steps(loop, loop.init(), 0, 3)
    state_scan, losses_scan = run_steps(scan, scan.init(), 0, 3)
    np.testing.assert_allclose(losses_scan, losses_loop, rtol=1e-5)
    blocks = state_loop["params"]["blocks"]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[blocks[i] for i in sorted(blocks)])
    assert_trees_close(state_scan["params"]["blocks"]["layers"], stacked, rtol=1e-4, atol=1e-6)


def test_cli_trains_with_falling_loss_and_reports_compile_time(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["train", "--config", TINY, "--workdir", str(workdir), "--no-progress",
                 "--config.model.scan_layers=True", "--config.model.remat=full",
                 "--config.model.depth=3"]) == 0
    losses = [r["loss"] for r in read_jsonl(workdir / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert "step 1: compiled the train step in" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, message", [
    ({"layernorm_scaling": True}, r"model.scan_layers=True cannot scan model.layernorm_scaling"),
    ({"norm_position": "mix", "mix_post_layers": 1},
     r"model.norm_position='mix' with 1 Post-LN and 2 Pre-LN layers; valid: "
     r"model.mix_post_layers=0 or 3"),
    ({"attention_schedule": "transnormer"},
     r"model.attention_schedule='transnormer' \(layers use diag_attention, norm_attention\)"),
])
def test_unsupported_combinations_are_refused(overrides, message):
    cfg = model_cfg(**{"scan_layers": True, **overrides})
    with pytest.raises(ConfigError, match=message):
        DecoderLM(cfg, rngs=nnx.Rngs(0))


def test_cli_refuses_the_unsupported_combination_in_one_line(tmp_path, capsys):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path / "run"),
                 "--config.model.scan_layers=True", "--config.model.layernorm_scaling=True"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.scan_layers=True cannot scan model.layernorm_scaling" in err
    assert "Traceback" not in err
    with pytest.raises(ConfigError, match="scan_layers"):
        config_lib.load(TINY, {"model.scan_layers": "yes"})


def test_per_layer_options_that_agree_across_layers_scan():
    # Mix-LN with every layer Post-LN, and a one-kind schedule, are uniform stacks.
    for overrides in ({"norm_position": "mix", "mix_post_layers": 3},
                      {"attention_schedule": "linear"}, {"block": "macaron"}):
        loop, scan = both_layouts(**overrides)
        np.testing.assert_allclose(scan(tokens()), loop(tokens()), rtol=1e-5, atol=1e-5)


def test_remat_inside_the_scan_keeps_less_for_the_backward_pass():
    def temp_bytes(policy):
        config = config_lib.load("configs/lm/gpt.py:depth=4,width=64,seq_len=128,batch=8",
                                 {"mesh": [("data", 1)], "model.remat": policy,
                                  "model.scan_layers": True})
        run = Run(config, jax.devices()[:1])
        compiled = run.train_step.lower(run.restore_target(), run.batch("train", 0)).compile()
        return compiled.memory_analysis().temp_size_in_bytes
    assert temp_bytes("full") < temp_bytes("none")


def test_the_vit_refuses_scan_layers():
    config = config_lib.load("configs/vision/vit_digits.py:runlocal", {"model.scan_layers": True})
    with pytest.raises(ConfigError, match="model.scan_layers=True is built for the decoder LM"):
        Run(config, jax.devices()[:1])
