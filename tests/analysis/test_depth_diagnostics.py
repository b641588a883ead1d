"""Depth and attention diagnostics against hand-computed references on a tiny LM."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.analysis import attention_health, depth
from jaxlab.config_defaults import transformer
from jaxlab.models import build
from jaxlab.ops.attention import apply_rope

VOCAB, T = 11, 6


@pytest.fixture(scope="module")
def setup():
    cfg = transformer(width=16, depth=2, num_heads=2, vocab_size=VOCAB, max_len=8, ffn_mult=2.0)
    model = build(cfg, nnx.Rngs(0))
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, VOCAB, (2, T)))
    batch = {"inputs": tokens, "targets": jnp.asarray(rng.integers(0, VOCAB, (2, T))),
             "weights": jnp.asarray(rng.integers(0, 2, (2, T)))}
    return model, batch, depth.depth_report(model, batch)


def manual_states(model, tokens, skip=None):
    pos = jnp.broadcast_to(jnp.arange(T), tokens.shape)
    states = [model.embed(tokens)]
    for i, block in enumerate(model.blocks):
        states.append(states[-1] if i == skip else block(states[-1], positions_bt=pos))
    return states


def manual_loss(model, batch, skip=None):
    x = model.final_norm(manual_states(model, batch["inputs"], skip)[-1])
    logits = model.embed.attend(x)
    nll = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
    w = batch["weights"].astype(jnp.float32)
    return float(jnp.sum(nll * w) / jnp.sum(w))


def test_hidden_states_statistics_and_angles(setup):
    model, batch, report = setup
    before = np.asarray(model(batch["inputs"]))
    states = depth.hidden_states(model, batch["inputs"])
    want = manual_states(model, batch["inputs"])
    assert len(states) == 3
    for got, ref in zip(states, want):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(model(batch["inputs"]), before)  # blocks are restored
    stats = depth.stream_statistics(states)
    np.testing.assert_array_equal(stats["rms"], report["rms"])
    np.testing.assert_allclose(stats["rms"], [np.sqrt(np.mean(np.square(h))) for h in want], rtol=1e-5)
    np.testing.assert_allclose(stats["variance"], [np.var(h, -1).mean() for h in want], rtol=1e-5)
    a, b = np.asarray(want[1], np.float64), np.asarray(want[2], np.float64)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    np.testing.assert_allclose(depth.angular_distances(states)[1], np.mean(np.arccos(cos) / np.pi),
                               rtol=1e-4)


def test_skip_loss_change_and_layer_gradient_norms(setup):
    model, batch, report = setup
    full = manual_loss(model, batch)
    np.testing.assert_allclose(float(depth.batch_loss(model, batch)), full, rtol=1e-5)
    changes = report["skip_loss_change"]
    np.testing.assert_allclose(changes, [manual_loss(model, batch, i) - full for i in range(2)],
                               rtol=1e-4, atol=1e-6)
    grads = nnx.jit(nnx.grad(lambda m: depth.batch_loss(m, batch)))(model)
    for i, got in enumerate(report["grad_norm"]):
        leaves = jax.tree.leaves(nnx.to_pure_dict(grads)["blocks"][i])
        np.testing.assert_allclose(got, np.sqrt(sum(np.sum(np.square(g)) for g in leaves)), rtol=1e-5)
    assert set(report) == {"rms", "variance", "angular_distance", "grad_norm", "skip_loss_change"}


def test_attention_entropy_and_max_logit_match_reference():
    cfg = transformer(width=16, depth=2, num_heads=2, num_kv_heads=1, vocab_size=VOCAB, max_len=8,
                      qk_norm="rms", qk_norm_affine=False)
    model = build(cfg, nnx.Rngs(2))
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, VOCAB, (2, T)))
    stats = attention_health.attention_stats(model, tokens)
    assert stats["entropy"].shape == stats["max_logit"].shape == (2, 2)
    attn = model.blocks[0].attention
    pos = jnp.broadcast_to(jnp.arange(T), tokens.shape)
    x = attn.norm(model.embed(tokens))
    q = apply_rope(attn.sublayer.q_norm(attn.sublayer.q(x).reshape(2, T, 2, 8)), pos)
    k = apply_rope(attn.sublayer.k_norm(attn.sublayer.k(x).reshape(2, T, 1, 8)), pos)
    logits = np.einsum("bthd,bsd->bhts", np.asarray(q), np.asarray(k)[:, :, 0]) / np.sqrt(8)
    causal = np.tril(np.ones((T, T), bool))
    logits = np.where(causal, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    entropy = -np.where(causal, p * np.log(np.where(causal, p, 1.0)), 0.0).sum(-1).mean((0, 2))
    np.testing.assert_allclose(stats["entropy"][0], entropy, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["max_logit"][0], logits.max((0, 2, 3)), rtol=1e-4)
    # qk-norm without affine: |logit| ≤ ‖q̂‖‖k̂‖/√d = √d.
    assert np.all(stats["max_logit"] <= np.sqrt(8) + 1e-4)
    assert np.all(stats["entropy"] <= np.log(T) + 1e-6) and np.all(stats["entropy"] > 0)
