"""Attention kinds as layers: registration, config errors, schedules, block isolation, the three
linear forms inside a layer, bidirectional use in the ViT, and a few training steps of every kind
on the 8-device mesh with a falling loss."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.config_defaults import transformer
from jaxlab.errors import ConfigError
from jaxlab.layers.attention_schedule import attention_kind
from jaxlab.models import build
from jaxlab.registry import ATTENTION
from tests.train.helpers import make_run, run_steps

KINDS = ["softmax", "linear", "norm_attention", "diag_attention", "sla", "softplus", "idw", "lsa"]


def cfg(**overrides):
    fields = dict(width=16, depth=2, num_heads=4, num_kv_heads=2, max_len=16, ffn_mult=2.0,
                  vocab_size=11, diag_block=4, chunk_size=3)
    return transformer(**{**fields, **overrides})


def x_and_positions(b=2, t=9, seed=0):
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((b, t, 16)), jnp.float32)
    return x, jnp.broadcast_to(jnp.arange(t), (b, t))


def test_every_kind_is_registered():
    assert set(KINDS) <= set(ATTENTION.names())


@pytest.mark.parametrize("key,value,needle", [
    ("linear_form", "scan", "model.linear_form='scan'"),
    ("linear_feature_map", "tanh", "model.linear_feature_map='tanh'"),
    ("chunk_size", 0, "model.chunk_size=0"),
    ("softplus_reweight_p", 0.0, "model.softplus_reweight_p=0.0"),
    ("diag_block", 0, "model.diag_block=0"),
])
def test_bad_values_are_named(key, value, needle):
    kind = {"softplus_reweight_p": "softplus", "diag_block": "diag_attention"}.get(key, "linear")
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        ATTENTION.get(kind)(cfg(**{key: value}), rngs=nnx.Rngs(0))


def test_schedule_splits_layers_into_groups():
    c = cfg(depth=4, attention_schedule="transnormer")
    assert [attention_kind(c, i) for i in range(4)] == ["diag_attention"] * 2 + ["norm_attention"] * 2
    c = cfg(depth=3, attention_schedule="softmax,linear,idw")
    assert [attention_kind(c, i) for i in range(3)] == ["softmax", "linear", "idw"]
    assert attention_kind(cfg(attention="sla"), 1) == "sla"
    model = build(cfg(depth=4, attention_schedule="transnormer"), nnx.Rngs(0))
    kinds = [type(block.attention.sublayer).__name__ for block in model.blocks]
    assert kinds == ["DiagAttention"] * 2 + ["NormAttention"] * 2
    with pytest.raises(ConfigError, match="empty entry"):
        build(cfg(attention_schedule="softmax,"), nnx.Rngs(0))


def test_diag_layer_perturbing_one_block_leaves_other_blocks_unchanged():
    attn = ATTENTION.get("diag_attention")(cfg(), rngs=nnx.Rngs(0))
    x, pos = x_and_positions(t=12)
    base = attn(x, positions_bt=pos)
    bumped = attn(x.at[:, 5].add(2.0), positions_bt=pos)  # block 1 = tokens 4..7
    changed = np.any(np.abs(np.asarray(bumped - base)) > 0, axis=(0, 2))
    assert changed[5:8].all() and not changed[:4].any() and not changed[8:].any()


@pytest.mark.parametrize("kind", ["linear", "norm_attention", "sla", "lsa"])
def test_linear_layer_forms_agree(kind):
    outs = []
    for form in ("recurrent", "chunked", "parallel"):
        attn = ATTENTION.get(kind)(cfg(linear_form=form), rngs=nnx.Rngs(0))
        x, pos = x_and_positions()
        outs.append(attn(x, positions_bt=pos))
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [dict(linear_feature_map="relu", linear_normalize=False),
                                     dict(linear_output_norm=True, linear_feature_map="identity")])
def test_linear_options_stay_causal(options):
    attn = ATTENTION.get("linear")(cfg(**options), rngs=nnx.Rngs(0))
    x, pos = x_and_positions()
    base = attn(x, positions_bt=pos)
    bumped = attn(x.at[:, 6].add(1.0), positions_bt=pos)
    np.testing.assert_array_equal(bumped[:, :6], base[:, :6])
    assert not np.allclose(bumped[:, 6:], base[:, 6:])


@pytest.mark.parametrize("kind", ["linear", "sla", "norm_attention", "softplus", "idw"])
def test_bidirectional_kinds_run_in_the_vit(kind):
    c = cfg(name="vit", causal=False, position="learned", image_size=8, patch_size=2, channels=1,
            num_classes=10, attention=kind)
    model = build(c, nnx.Rngs(0))
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 1)), jnp.float32)
    logits = model(images)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    # Bidirectional: the first patch's representation depends on the last patch.
    attn = model.blocks[0].attention.sublayer
    x, pos = x_and_positions(t=16)
    out = attn(x, positions_bt=pos)
    bumped = attn(x.at[:, -1].add(1.0), positions_bt=pos)
    assert not np.allclose(out[:, 0], bumped[:, 0])


def test_every_kind_trains_in_one_mixed_stack_on_the_8_device_mesh():
    # One layer of each kind in one model: a single compile covers the whole family.
    overrides = {"model.attention_schedule": ",".join(KINDS), "model.depth": len(KINDS),
                 "model.diag_block": 8, "optim.lr": 3e-3}
    run = make_run([("data", 4), ("fsdp", 2)], **overrides)
    model = nnx.eval_shape(lambda: build(run.config.model, nnx.Rngs(0)))
    assert {type(block.attention.sublayer) for block in model.blocks} == {ATTENTION.get(k) for k in KINDS}
    _, losses = run_steps(run, run.init(), 0, 4)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS + ["schedule"])
def test_each_kind_alone_trains_on_the_8_device_mesh(kind):
    overrides = ({"model.attention_schedule": "transnormer", "model.diag_block": 8}
                 if kind == "schedule" else {"model.attention": kind})
    run = make_run([("data", 4), ("fsdp", 2)], **overrides, **{"optim.lr": 3e-3})
    _, losses = run_steps(run, run.init(), 0, 4)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
