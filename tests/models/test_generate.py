"""Cached decoding: token-by-token decode equals the full forward for every attention kind, and
`generate` equals a naive loop that re-runs the whole prefix."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.config_defaults import transformer
from jaxlab.models import build, generate
from jaxlab.models.decoding import init_cache

KINDS = ["softmax", "linear", "norm_attention", "diag_attention", "sla", "softplus", "idw", "lsa"]
T = 9


def lm(**overrides):
    fields = dict(width=16, depth=2, num_heads=4, num_kv_heads=2, max_len=16, ffn_mult=2.0,
                  vocab_size=11, diag_block=4, chunk_size=4)
    return build(transformer(**{**fields, **overrides}), nnx.Rngs(0))


def tokens(b=2, t=T, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 11, (b, t)), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def decode_step(graphdef, state, toks_bt, positions_bt):
    model = nnx.merge(graphdef, state)
    return model(toks_bt, positions_bt=positions_bt, decode=True), nnx.state(model)


def decode_in_pieces(model, toks, sizes):
    decoder = nnx.merge(*nnx.split(model))
    init_cache(decoder, toks.shape[0], toks.shape[1])
    graphdef, state = nnx.split(decoder)
    outs, start = [], 0
    for size in sizes:
        positions = jnp.broadcast_to(jnp.arange(start, start + size), (toks.shape[0], size))
        out, state = decode_step(graphdef, state, toks[:, start:start + size], positions)
        outs.append(out)
        start += size
    return jnp.concatenate(outs, axis=1)


CASES = [dict(attention=k) for k in KINDS] + [
    dict(attention="softmax", attention_softcap=3.0, num_kv_heads=1),
    dict(attention="softplus", softplus_reweight_p=2.0, max_len=4),  # past the training length
    dict(attention_schedule="transnormer"),
    dict(attention="linear", linear_form="recurrent", linear_output_norm=True),
    dict(attention="sla", linear_form="parallel", position="learned"),
]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_token_by_token_decode_equals_full_forward(overrides):
    model = lm(**overrides)
    toks = tokens()
    full = model(toks)
    stepped = decode_in_pieces(model, toks, [1] * T)
    np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("kind", ["linear", "sla", "norm_attention"])
def test_state_kinds_decode_several_tokens_per_call(kind):
    model = lm(attention=kind)
    toks = tokens()
    np.testing.assert_allclose(decode_in_pieces(model, toks, [4, 1, 3, 1]), model(toks),
                               rtol=1e-5, atol=2e-5)


def naive_greedy(model, prompt_bt, steps):
    """Re-runs the whole prefix for every token, right-padded to one shape (causal masks hide
    the padding)."""
    b, p = prompt_bt.shape
    forward = jax.jit(lambda state, seq: nnx.merge(graphdef, state)(seq))
    graphdef, state = nnx.split(model)
    seq = jnp.zeros((b, p + steps), jnp.int32).at[:, :p].set(prompt_bt)
    for i in range(p, p + steps):
        seq = seq.at[:, i].set(jnp.argmax(forward(state, seq)[:, i - 1], axis=-1).astype(jnp.int32))
    return seq[:, p:]


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_greedy_generate_equals_rerunning_the_prefix(kind):
    model = lm(attention=kind, width=32)
    prompt = tokens(t=4)
    got = generate(model, prompt, 6)
    np.testing.assert_array_equal(got, naive_greedy(model, prompt, 6))
    assert model.blocks[0].attention.sublayer.cache is None  # the caller's model is untouched


def test_sampling_depends_on_rng_and_is_reproducible():
    model = lm()
    prompt = tokens(b=1, t=3)
    a = generate(model, prompt, 8, temperature=1.0, rng=jax.random.key(1))
    b = generate(model, prompt, 8, temperature=1.0, rng=jax.random.key(1))
    c = generate(model, prompt, 8, temperature=1.0, rng=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 8) and not np.array_equal(a, c)
    one_d = generate(model, prompt[0], 8, temperature=1.0, rng=jax.random.key(1))
    np.testing.assert_array_equal(one_d, a[0])


def test_errors_name_the_problem():
    model = lm(position="learned")
    with pytest.raises(ValueError, match="exceeds the 16 learned positions"):
        generate(model, tokens(t=10), 7)
    with pytest.raises(ValueError, match="before init_cache"):
        model(tokens(t=1), decode=True)
    with pytest.raises(ValueError, match="one token per call"):
        decode_in_pieces(lm(), tokens(), [2])


def test_the_trainer_sample_uses_cached_generation():
    from tests.train.helpers import make_run

    run = make_run([("data", 1)], devices=jax.devices()[:1], **{"model.attention": "linear"})
    from jaxlab.models.sampling import decode_bytes

    state = run.init()
    seq_len = run.config.data.seq_len
    prompt = run.dataset.batch("valid", 0, 1, seed=run.config.seed)["inputs"][0, :seq_len // 2]
    model = run.model_def.merge(state["params"], state["extra"])
    want = generate(model, prompt, 10, temperature=0.8, rng=jax.random.key(run.config.seed))
    assert seq_len // 2 < 48 and seq_len - seq_len // 2 >= 10  # the runlocal sizes this checks
    assert run.sample(state, length=10) == decode_bytes(prompt) + decode_bytes(np.asarray(want))
