"""DecoderLM and ViT: shapes, causality, parameter counts, config errors, sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.config_defaults import transformer
from jaxlab.errors import ConfigError
from jaxlab.models import build
from jaxlab.models.sampling import decode_bytes, sample_tokens
from jaxlab.models.vit import patchify

WIDTH, DEPTH, HEADS, KV_HEADS, MAX_LEN, VOCAB, FFN_MULT = 32, 2, 4, 2, 16, 64, 2.0
HEAD_DIM, HIDDEN = WIDTH // HEADS, int(WIDTH * FFN_MULT)


def lm_cfg(**overrides):
    fields = dict(width=WIDTH, depth=DEPTH, num_heads=HEADS, num_kv_heads=KV_HEADS, max_len=MAX_LEN,
                  ffn_mult=FFN_MULT, vocab_size=VOCAB)
    return transformer(**{**fields, **overrides})


def vit_cfg(**overrides):
    fields = dict(name="vit", causal=False, position="learned", image_size=8, patch_size=2,
                  channels=1, num_classes=10)
    return lm_cfg(**{**fields, **overrides})


def abstract_model(cfg):
    """Shapes only: builds no arrays, so it is cheap."""
    return nnx.eval_shape(lambda: build(cfg, nnx.Rngs(0)))


def param_shapes(model):
    leaves = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param),
                                       is_leaf=lambda x: isinstance(x, nnx.Variable))
    return [v.get_value().shape for v in leaves]


def param_count(model):
    return sum(int(np.prod(shape)) for shape in param_shapes(model))


def expected_lm_params(*, tied=True, norm_params=WIDTH, final_norm=True, learned=False,
                       kv_heads=KV_HEADS):
    attention = 2 * WIDTH * WIDTH + 2 * WIDTH * kv_heads * HEAD_DIM  # q, o + k, v
    glu = 3 * WIDTH * HIDDEN  # gate, up, down
    block = attention + glu + 2 * norm_params
    return (VOCAB * WIDTH + DEPTH * block + (norm_params if final_norm else 0)
            + (0 if tied else WIDTH * VOCAB) + (MAX_LEN * WIDTH if learned else 0))


forward = nnx.jit(lambda model, inputs: model(inputs))


@pytest.fixture(scope="module")
def lm():
    return build(lm_cfg(), nnx.Rngs(0))


def random_tokens(seed, shape=(2, 12)):
    return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int32)


def test_lm_logits_shape_and_dtype(lm):
    logits = forward(lm, random_tokens(0))
    assert logits.shape == (2, 12, VOCAB) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_lm_is_causal(lm):
    tokens = random_tokens(1)
    logits = np.asarray(forward(lm, tokens))
    for t in (0, 5, 10):
        changed = tokens.copy()
        changed[:, t + 1:] = (tokens[:, t + 1:] + 1 + random_tokens(2)[:, t + 1:] % 7) % VOCAB
        new_logits = np.asarray(forward(lm, changed))
        np.testing.assert_allclose(new_logits[:, :t + 1], logits[:, :t + 1], rtol=1e-5, atol=1e-5)
        assert np.abs(new_logits[:, t + 1:] - logits[:, t + 1:]).max() > 1e-4


def test_param_count_matches_closed_form_tied_and_untied():
    tied = param_count(abstract_model(lm_cfg()))
    untied = param_count(abstract_model(lm_cfg(tie_embeddings=False)))
    assert tied == expected_lm_params(tied=True)
    assert untied == expected_lm_params(tied=False)
    assert untied - tied == VOCAB * WIDTH


def test_post_norm_learned_layernorm_model():
    model = abstract_model(lm_cfg(norm_position="post", position="learned", norm="layernorm"))
    assert model.final_norm is None
    assert model.positions.table.get_value().shape == (MAX_LEN, WIDTH)
    assert param_count(model) == expected_lm_params(norm_params=2 * WIDTH, final_norm=False,
                                                    learned=True)


def test_gqa_model_has_smaller_kv_kernels():
    gqa = abstract_model(lm_cfg()).blocks[0].attention.sublayer
    mha = abstract_model(lm_cfg(num_kv_heads=0)).blocks[0].attention.sublayer
    for proj in ("k", "v"):
        assert getattr(gqa, proj).kernel.get_value().shape == (WIDTH, KV_HEADS * HEAD_DIM)
        assert getattr(mha, proj).kernel.get_value().shape == (WIDTH, WIDTH)
    assert gqa.q.kernel.get_value().shape == mha.q.kernel.get_value().shape == (WIDTH, WIDTH)
    assert param_count(abstract_model(lm_cfg(num_kv_heads=0))) == expected_lm_params(kv_heads=HEADS)


def test_bfloat16_model_returns_float32_logits_close_to_float32_model(lm):
    half = build(lm_cfg(dtype="bfloat16"), nnx.Rngs(0))  # same seed, float32 params either way
    tokens = random_tokens(3)
    logits = forward(half, tokens)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, forward(lm, tokens), atol=0.1, rtol=0.1)


def test_vit_logits_shape():
    vit = build(vit_cfg(), nnx.Rngs(0))
    images = np.random.default_rng(4).standard_normal((2, 8, 8, 1)).astype(np.float32)
    logits = forward(vit, images)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))


def test_patchify_is_row_major_over_patches():
    image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    #  0  1 |  2  3
    #  4  5 |  6  7
    #  -----+------
    #  8  9 | 10 11
    # 12 13 | 14 15
    expected = np.array([[[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]])
    np.testing.assert_array_equal(patchify(image, 2), expected)


def test_patchify_keeps_channels_innermost():
    image = np.stack([np.arange(16.0).reshape(4, 4), -np.arange(16.0).reshape(4, 4)], -1)[None]
    patches = np.asarray(patchify(image, 2))
    assert patches.shape == (1, 4, 8)
    np.testing.assert_array_equal(patches[0, 1], [2, -2, 3, -3, 6, -6, 7, -7])


@pytest.mark.parametrize("cfg,match", [
    (lm_cfg(width=30), "divisible"), (lm_cfg(num_kv_heads=3), "multiple"),
    (vit_cfg(width=30), "divisible"), (vit_cfg(patch_size=3), "patch_size")])
def test_bad_shapes_raise_config_error(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build(cfg, nnx.Rngs(0))


def next_token_forward(vocab, calls):
    """Fake LM: logits put all mass on (token + 1) % vocab at every position."""
    def forward(tokens_1t):
        calls.append(np.asarray(tokens_1t))
        return 10.0 * jax.nn.one_hot((tokens_1t + 1) % vocab, vocab)
    return forward


def test_sample_tokens_greedy_follows_fake_forward():
    calls = []
    out = sample_tokens(next_token_forward(8, calls), np.array([3, 4]), length=6, window=4,
                        temperature=0.0)
    np.testing.assert_array_equal(out, [5, 6, 7, 0, 1, 2])
    assert out.dtype == np.int32
    assert all(c.shape == (1, 4) for c in calls) and len(calls) == 6
    np.testing.assert_array_equal(calls[0], [[3, 4, 0, 0]])  # right-padded context
    np.testing.assert_array_equal(calls[-1], [[6, 7, 0, 1]])  # last `window` tokens


def test_sample_tokens_with_temperature_follows_a_peaked_distribution():
    out = sample_tokens(next_token_forward(8, []), np.array([0]), length=4, window=4,
                        temperature=0.5, seed=1)
    np.testing.assert_array_equal(out, [1, 2, 3, 4])


def test_decode_bytes_round_trips_ascii():
    text = "Hello, jaxlab! 123\n"
    assert decode_bytes(np.frombuffer(text.encode(), np.uint8).astype(np.int32)) == text
    assert decode_bytes(np.array([104 + 256, 105])) == "hi"
