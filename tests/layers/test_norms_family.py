"""Norm kinds as layers: running state only moves in training mode, PRepBN's λ ends, its fold,
qk-norm invariance, and the σReparam / spectral / weight-norm Dense layers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from jaxlab.config_defaults import transformer
from jaxlab.errors import ConfigError
from jaxlab.layers.attention import SoftmaxAttention
from jaxlab.layers.common import Dense, dense, training_mode
from jaxlab.layers.norms import PowerNorm, ProgressiveRepBN, RepBN
from jaxlab.layers.reparam import SigmaReparamDense, SpectralNormDense, WeightNormDense
from jaxlab.ops import norms as ops
from jaxlab.registry import NORM

KINDS = ["layernorm", "rmsnorm", "crmsnorm", "dyt", "powernorm", "repbn", "prepbn"]


def rand(shape, seed=0, loc=0.0, scale=1.0):
    return jnp.asarray(loc + scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def params(module):
    return jax.tree.leaves(nnx.state(module, nnx.Param))


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_registered_and_affine_free_variant_has_no_vectors(kind):
    x = rand((2, 3, 8), 1, loc=1.0)
    norm = NORM.get(kind)(8, rngs=nnx.Rngs(0))
    assert norm(x).shape == x.shape and np.isfinite(np.asarray(norm(x))).all()
    bare = NORM.get(kind)(8, rngs=nnx.Rngs(0), use_scale=False, use_bias=False)
    assert all(p.shape != (8,) for p in params(bare))  # only scalars (DyT α, RepBN α) remain


def test_powernorm_updates_running_statistic_only_in_training():
    norm = PowerNorm(8, rngs=nnx.Rngs(0), use_scale=False, use_bias=False)
    x = rand((4, 5, 8), 2, loc=1.0, scale=2.0)
    y = norm(x)
    np.testing.assert_array_equal(norm.mean_square[...], 1.0)  # eval: unchanged
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-6)
    with training_mode(0):
        y_train = norm(x)
    np.testing.assert_allclose(y_train, y, rtol=1e-6)  # normalizes with the *previous* ψ²
    np.testing.assert_allclose(norm.mean_square[...], 0.9 + 0.1 * np.mean(np.square(x), (0, 1)),
                               rtol=1e-5)


def test_repbn_uses_batch_statistics_in_training_and_running_ones_at_eval():
    norm = RepBN(8, rngs=nnx.Rngs(0))
    x = rand((4, 5, 8), 3, loc=2.0, scale=3.0)
    with training_mode(0):
        y = norm(x)
    mean, var = np.mean(x, (0, 1)), np.var(x, (0, 1))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5) + x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norm.mean[...], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.var[...], 0.9 + 0.1 * var, rtol=1e-5)
    running = (norm.mean[...], norm.var[...])
    y_eval = norm(x)
    np.testing.assert_allclose(y_eval, (x - running[0]) / np.sqrt(running[1] + 1e-5) + x,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(norm.mean[...], running[0])


def trained_prepbn(**kwargs):
    norm = ProgressiveRepBN(8, rngs=nnx.Rngs(0), **kwargs)
    for p, seed in ((norm.layer_norm.scale, 4), (norm.layer_norm.bias, 5), (norm.rep_bn.scale, 6),
                    (norm.rep_bn.bias, 7)):
        p[...] = rand((8,), seed)
    norm.rep_bn.alpha[...] = jnp.float32(0.4)
    return norm


def test_prepbn_lambda_one_is_layernorm_and_lambda_zero_is_repbn():
    norm = trained_prepbn(warmup_steps=5, decay_steps=10)
    x = rand((4, 5, 8), 8, loc=1.0, scale=2.0)
    with training_mode(jnp.asarray(3)):  # warmup: λ = 1
        np.testing.assert_array_equal(norm(x), norm.layer_norm(x))
        with_batch_stats = norm.rep_bn(x, update_stats=False)
    np.testing.assert_array_equal(norm.rep_bn.mean[...], 0.0)  # no BN updates during warmup
    with training_mode(jnp.asarray(15)):  # decay over: λ = 0
        np.testing.assert_allclose(norm(x), with_batch_stats, rtol=1e-6, atol=1e-6)
    with training_mode(jnp.asarray(5)):
        np.testing.assert_allclose(norm(x), norm.layer_norm(x), rtol=1e-6)  # λ = r0 = 1
    with training_mode(jnp.asarray(12)):  # λ = 1 − 7/10
        want = 0.3 * norm.layer_norm(x) + 0.7 * norm.rep_bn(x)
        np.testing.assert_allclose(norm(x), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(norm(x), norm.rep_bn(x))  # eval: RepBN with running stats


def test_prepbn_schedule_depends_on_the_step_not_on_calls():
    norm = trained_prepbn(warmup_steps=0, decay_steps=10)
    x = rand((4, 5, 8), 9, loc=1.0)
    with training_mode(jnp.asarray(4)):
        outputs = [np.asarray(norm(x)) for _ in range(3)]  # e.g. three accumulated microbatches
    np.testing.assert_array_equal(outputs[0], outputs[2])
    with pytest.raises(ValueError, match="global step"):
        with training_mode(None):
            norm(x)


def test_prepbn_eval_folds_into_next_dense():
    norm = trained_prepbn(warmup_steps=0, decay_steps=1)
    for seed in range(3):  # move the running statistics away from their init
        with training_mode(jnp.asarray(5)):
            norm(rand((4, 5, 8), 10 + seed, loc=1.5, scale=2.0))
    following = Dense(8, 6, axes=("embed", "mlp"), rngs=nnx.Rngs(1), use_bias=True)
    following.bias[...] = rand((6,), 20)
    x = rand((3, 5, 8), 21, loc=1.0, scale=2.0)
    a, c = norm.rep_bn.eval_affine()
    kernel, bias = ops.fold_affine_into_dense(a, c, following.kernel[...], following.bias[...])
    np.testing.assert_allclose(x @ kernel + bias, following(norm(x)), rtol=1e-5, atol=1e-5)


def attention_cfg(**kw):
    return transformer(width=32, depth=1, num_heads=4, num_kv_heads=2, max_len=8, vocab_size=11,
                       **kw)


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_qk_norm_without_affine_makes_attention_invariant_to_qk_scale(kind):
    attn = SoftmaxAttention(attention_cfg(qk_norm=kind, qk_norm_affine=False), rngs=nnx.Rngs(0))
    assert not params(attn.q_norm)
    x, pos = rand((2, 6, 32), 1), jnp.tile(jnp.arange(6), (2, 1))
    before = attn(x, positions_bt=pos)
    attn.q.kernel[...] *= 1000.0
    attn.k.kernel[...] *= 1000.0
    np.testing.assert_allclose(attn(x, positions_bt=pos), before, rtol=1e-4, atol=1e-5)


def test_qk_norm_is_applied_per_head_before_rope():
    from jaxlab.ops.attention import apply_rope, softmax_attention
    attn = SoftmaxAttention(attention_cfg(qk_norm="rms"), rngs=nnx.Rngs(0))
    attn.q_norm.scale[...] = rand((8,), 2)
    attn.k_norm.scale[...] = rand((8,), 3)
    x, pos = rand((2, 6, 32), 4), jnp.tile(jnp.arange(6), (2, 1))
    q = ops.rms_norm((x @ attn.q.kernel[...]).reshape(2, 6, 4, 8), attn.q_norm.scale[...])
    k = ops.rms_norm((x @ attn.k.kernel[...]).reshape(2, 6, 2, 8), attn.k_norm.scale[...])
    v = (x @ attn.v.kernel[...]).reshape(2, 6, 2, 8)
    out = softmax_attention(apply_rope(q, pos), apply_rope(k, pos), v, causal=True)
    np.testing.assert_allclose(attn(x, positions_bt=pos), out.reshape(2, 6, 32) @ attn.o.kernel[...],
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="qk_norm='bad'.*'rms'"):
        SoftmaxAttention(attention_cfg(qk_norm="bad"), rngs=nnx.Rngs(0))


def test_sigma_reparam_power_iteration_reaches_svd_and_freezes_at_eval():
    layer = SigmaReparamDense(24, 16, axes=("embed", "mlp"), rngs=nnx.Rngs(0))
    kernel = np.asarray(layer.kernel[...], np.float64)
    top = np.linalg.svd(kernel, compute_uv=False)[0]
    x = rand((3, 24), 1)
    np.testing.assert_allclose(layer(x), x @ layer.kernel[...], rtol=1e-4, atol=1e-5)  # γ = σ₀
    layer.u[...] = rand((16,), 2)  # forget the SVD start
    frozen = np.asarray(layer.u[...])
    layer(x)
    np.testing.assert_array_equal(layer.u[...], frozen)  # eval leaves the vector alone
    train_call = nnx.jit(lambda layer, x: _in_training(layer, x))
    for _ in range(100):
        train_call(layer, x)
    assert not np.array_equal(layer.u[...], frozen)
    assert abs(float(layer.sigma()) - top) < 1e-3
    layer.gamma[...] = jnp.float32(2.5)
    effective = np.asarray(layer.effective_kernel(), np.float64)
    np.testing.assert_allclose(np.linalg.svd(effective, compute_uv=False)[0], 2.5, rtol=1e-3)


def _in_training(layer, x):
    with training_mode(0):
        return layer(x)


def test_sigma_reparam_gradients_match_finite_differences():
    with jax.enable_x64(True):
        layer = SigmaReparamDense(5, 4, axes=("embed", "mlp"), rngs=nnx.Rngs(0), use_bias=True,
                                  dtype=jnp.float64)
        u = np.random.default_rng(3).standard_normal(4)
        x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 5)))

        graphdef, _ = nnx.split(layer)

        def loss(kernel, gamma, with_update):
            _, state = nnx.split(layer)
            pure = nnx.to_pure_dict(state)
            pure.update(kernel=kernel, gamma=gamma, u=jnp.asarray(u))
            nnx.replace_by_pure_dict(state, pure)
            model = nnx.merge(graphdef, state)
            if with_update:
                with training_mode(0):
                    return jnp.sum(jnp.tanh(model(x)))
            return jnp.sum(jnp.tanh(model(x)))

        kernel = jnp.asarray(np.random.default_rng(5).standard_normal((5, 4)))
        # Eval: u is a constant, so σ = ‖W u‖ and autodiff must match finite differences.
        check_grads(lambda k, g: loss(k, g, False), (kernel, jnp.float64(1.3)), order=1,
                    modes=["rev"], atol=1e-6, rtol=1e-6)
        # Training from a converged u: σ is stationary in u, so the stopped gradient through
        # the power iteration is still the exact derivative.
        u = np.linalg.svd(np.asarray(kernel))[2][0]
        check_grads(lambda k, g: loss(k, g, True), (kernel, jnp.float64(1.3)), order=1,
                    modes=["rev"], atol=1e-6, rtol=1e-6)


def test_spectral_and_weight_norm_dense():
    sn = SpectralNormDense(12, 7, axes=("embed", "mlp"), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.linalg.svd(np.asarray(sn.effective_kernel()), compute_uv=False)[0],
                               1.0, rtol=1e-5)
    wn = WeightNormDense(12, 7, axes=("embed", "mlp"), rngs=nnx.Rngs(0))
    x = rand((2, 12), 1)
    np.testing.assert_allclose(wn(x), x @ wn.kernel[...], rtol=1e-5, atol=1e-6)  # g = ‖V₀‖
    wn.gain[...] = jnp.full((7,), 2.0)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(wn.effective_kernel()), axis=0), 2.0,
                               rtol=1e-5)


def test_dense_factory_follows_sigma_reparam_key():
    cfg = attention_cfg(sigma_reparam=True)
    assert isinstance(dense(cfg, 4, 3, axes=("embed", "mlp"), rngs=nnx.Rngs(0)), SigmaReparamDense)
    plain = dense(attention_cfg(), 4, 3, axes=("embed", "mlp"), rngs=nnx.Rngs(0))
    assert type(plain) is Dense
    attn = SoftmaxAttention(cfg, rngs=nnx.Rngs(0))
    assert all(isinstance(m, SigmaReparamDense) for m in (attn.q, attn.k, attn.v, attn.o))
