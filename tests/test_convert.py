"""Pre-LN → Pre-RMSNorm → Pre-CRMSNorm conversions give the same logits and input gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.config_defaults import transformer
from jaxlab.convert import preln_to_precrmsnorm, preln_to_prermsnorm
from jaxlab.layers.norms import CRMSNorm, RMSNorm
from jaxlab.models import build

VOCAB, WIDTH, T = 13, 16, 6


def random_preln(dtype, mean_scale, **kw):
    cfg = transformer(width=WIDTH, depth=2, num_heads=4, num_kv_heads=2, vocab_size=VOCAB,
                      max_len=8, ffn_mult=2.0, norm="layernorm", dtype=dtype, **kw)
    model = build(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(1)
    # Random norm affines and a stream with a large mean make the test bite.
    for path, p in nnx.iter_graph(model):
        if isinstance(p, nnx.Param) and path[-1] in ("scale", "bias"):
            p[...] = jnp.asarray(rng.standard_normal(p[...].shape) * 0.5 + (path[-1] == "scale"),
                                 p[...].dtype)
    model.embed.table[...] = model.embed.table[...] * mean_scale[0] + mean_scale[1]
    return model


call = nnx.jit(lambda model, tokens: model(tokens))


def forward(model, tokens, shift_btd):
    """DecoderLM's forward with `shift_btd` added to the embedding output (input gradients)."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    x = model.positions(model.embed(tokens), positions) + shift_btd
    for block in model.blocks:
        x = block(x, positions_bt=positions)
    x = model.final_norm(x)
    return model.embed.attend(x) if model.head is None else model.head(x)


def compressed(shift, width):
    """The shift as each model's stream sees it: all d coordinates, centered, or centered d−1."""
    centered = shift - shift.mean(-1, keepdims=True)
    return {WIDTH: shift, -WIDTH: centered, WIDTH - 1: centered[..., :-1]}[width]


def logits_and_input_grad(model, tokens, shift, width):
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal((2, T, VOCAB)), shift.dtype)
    graphdef, state = nnx.split(model)

    @jax.jit  # compiled: eager float64 runs are slow on CPU
    def run(state, shift):
        model = nnx.merge(graphdef, state)
        logits, vjp = jax.vjp(lambda s: forward(model, tokens, compressed(s, width)), shift)
        return logits, vjp(cotangent)[0]

    return run(state, shift)


def check_equivalent(dtype, rtol, atol, mean_scale, **kw):
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, VOCAB, (2, T)))
    pre_ln = random_preln(dtype, mean_scale, **kw)
    plain_logits = np.asarray(call(pre_ln, tokens))
    rms = preln_to_prermsnorm(pre_ln)
    crms = preln_to_precrmsnorm(pre_ln)
    chained = preln_to_precrmsnorm(rms)
    assert isinstance(rms.blocks[0].attention.norm, RMSNorm)
    assert isinstance(crms.final_norm, CRMSNorm) and crms.embed.table.shape == (VOCAB, WIDTH - 1)
    shift = jnp.asarray(np.random.default_rng(4).standard_normal((2, T, WIDTH)), dtype)
    ref_logits, ref_grad = logits_and_input_grad(pre_ln, tokens, shift, WIDTH)
    assert ref_logits.dtype == jnp.dtype(dtype)
    for model, width in ((rms, -WIDTH), (crms, WIDTH - 1), (chained, WIDTH - 1)):
        got_logits, got_grad = logits_and_input_grad(model, tokens, shift, width)
        # atol is relative to the largest entry.
        np.testing.assert_allclose(got_logits, ref_logits, rtol=rtol,
                                   atol=atol * np.abs(ref_logits).max())
        np.testing.assert_allclose(got_grad, ref_grad, rtol=rtol, atol=atol * np.abs(ref_grad).max())
        np.testing.assert_allclose(call(model, tokens), plain_logits, rtol=rtol,
                                   atol=atol * np.abs(plain_logits).max())
    np.testing.assert_array_equal(call(pre_ln, tokens), plain_logits)  # the input model is untouched


@pytest.mark.parametrize("kw", [{}, {"position": "learned", "tie_embeddings": False, "ffn": "mlp",
                                     "layernorm_scaling": True}], ids=["rope_glu_tied", "learned_mlp_lns"])
def test_float64_conversions_are_exact(kw):
    with jax.enable_x64(True):
        # A stream with a large mean (table ×20 + 3) makes LayerNorm's centering matter.
        check_equivalent("float64", rtol=1e-10, atol=1e-12, mean_scale=(20.0, 3.0), **kw)


def test_float32_conversions_match_to_1e5():
    check_equivalent("float32", rtol=1e-5, atol=1e-5, mean_scale=(1.0, 0.5))


@pytest.mark.parametrize("kw,match", [({"norm_position": "post"}, "final norm"),
                                      ({"qk_norm": "rms"}, "qk-norm"),
                                      ({"norm": "dyt"}, "norm kinds")])
def test_unsupported_models_are_refused(kw, match):
    cfg = transformer(width=WIDTH, depth=1, num_heads=4, vocab_size=VOCAB, max_len=8,
                      **{"norm": "layernorm", **kw})
    with pytest.raises(ValueError, match=match):
        preln_to_prermsnorm(build(cfg, nnx.Rngs(0)))


@pytest.mark.parametrize("norm,position", [
    ("prepbn", "pre"), pytest.param("repbn", "peri", marks=pytest.mark.slow)])
def test_fold_repbn_matches_eval_model(norm, position):
    from jaxlab.convert import Identity, fold_repbn
    from jaxlab.layers.common import training_mode
    cfg = transformer(width=WIDTH, depth=2, num_heads=4, vocab_size=VOCAB, max_len=8,
                      norm=norm, norm_position=position, layernorm_scaling=True,
                      prepbn_decay_steps=2)
    model = build(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(5)
    for _, p in nnx.iter_graph(model):
        if isinstance(p, nnx.Param) and p[...].ndim == 1:
            p[...] = jnp.asarray(rng.standard_normal(p[...].shape) * 0.3 + 1.0, p[...].dtype)
    train_call = nnx.jit(lambda m, t: _train_forward(m, t, training_mode))
    for step in range(3):  # move the BN running statistics away from their init
        train_call(model, jnp.asarray(rng.integers(0, VOCAB, (4, T))))
    tokens = jnp.asarray(rng.integers(0, VOCAB, (2, T)))
    folded = fold_repbn(model)
    assert isinstance(folded.blocks[1].attention.norm, Identity)
    assert isinstance(folded.final_norm, Identity)
    if position == "peri":  # an output norm feeds the residual add, not a Dense: kept
        assert type(folded.blocks[0].attention.out_norm) is type(model.blocks[0].attention.out_norm)
    want = np.asarray(call(model, tokens))
    np.testing.assert_allclose(call(folded, tokens), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _train_forward(model, tokens, training_mode):
    with training_mode(10):
        return model(tokens)
