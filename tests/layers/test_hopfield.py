"""Hopfield, HopfieldPooling and HopfieldLayer: presets, equivalences, symmetries, options."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlab.errors import ConfigError
from jaxlab.layers import Hopfield, HopfieldLayer, HopfieldPooling
from jaxlab.ops.attention import softmax_attention


def normal(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_pure_preset_retrieves_masked_patterns():
    rng = np.random.default_rng(0)
    patterns = rng.choice([-1.0, 1.0], size=(1000, 128)).astype(np.float32)
    picks = rng.integers(0, 1000, size=100)
    queries = patterns[picks].copy()
    queries[:, 64:] = 0.0
    layer = Hopfield.pure(128, scaling=1.0)
    assert not nnx.state(layer, nnx.Param)  # nothing to learn
    out = layer(stored=jnp.asarray(patterns)[None], state=jnp.asarray(queries)[None])[0]
    assert np.mean(np.max(np.abs(np.asarray(out) - patterns[picks]), axis=1) < 1e-6) >= 0.99
    mixed = Hopfield.pure(128, scaling=0.1)(stored=jnp.asarray(patterns)[None],
                                            state=jnp.asarray(queries)[None])[0]
    assert np.mean(np.max(np.abs(np.asarray(mixed) - patterns[picks]), axis=1)) > 0.3


def reference_mha(layer, x, key_mask=None):
    """Multi-head attention written from the layer's weights with jaxlab's softmax attention."""
    def proj(p, x):
        return jnp.einsum("bsd,dhe->bshe", x, p.kernel[...]) + p.bias[...]
    q, k, v = proj(layer.q_proj, x), proj(layer.k_proj, x), proj(layer.v_proj, x)
    out = softmax_attention(q, k, v, key_mask_bs=key_mask)
    return out.reshape(out.shape[:2] + (-1,)) @ layer.out_kernel[...] + layer.out_bias[...]


def test_attention_preset_equals_multi_head_attention():
    layer = Hopfield.attention(16, 4, rngs=nnx.Rngs(1))
    x = normal(2, 3, 7, 16)
    key_mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3, [0, 1, 1, 1, 1, 1, 1]], bool)
    ours, ref = jax.jit(lambda x, m: layer(x, key_mask_bs=m)), jax.jit(lambda x, m: reference_mha(layer, x, m))
    np.testing.assert_allclose(ours(x, None), ref(x, None), atol=1e-6)
    np.testing.assert_allclose(ours(x, key_mask), ref(x, key_mask), atol=1e-6)
    ours = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(layer(x)))))(x)
    ref = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(reference_mha(layer, x)))))(x)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_update_steps_max_gives_n_plus_one_association_steps():
    layer = Hopfield.attention(16, 2, update_steps_max=3, update_steps_eps=0.0, rngs=nnx.Rngs(0))
    xi, _, count = jax.jit(lambda x: layer.association(x))(normal(3, 2, 5, 16))
    np.testing.assert_array_equal(count, [4, 4])
    assert np.all(np.isfinite(jax.jit(jax.grad(lambda x: jnp.sum(layer(x) ** 2)))(normal(3, 2, 5, 16))))


def test_concat_bias_pattern_is_used():
    layer = Hopfield(8, num_heads=2, concat_bias_pattern=True, rngs=nnx.Rngs(0))
    x = normal(4, 2, 5, 8)
    before = layer(x)
    layer.bias_v[...] = layer.bias_v[...] + 1.0
    after_v = layer(x)
    layer.bias_k[...] = layer.bias_k[...] + 1.0
    after_k = layer(x)
    assert not np.allclose(before, after_v) and not np.allclose(after_v, after_k)
    _, xi = layer(x, return_association=True)
    assert xi.shape == (2, 2, 5, 6)  # one extra (bias) pattern per head


def test_zero_association_adds_a_pattern_that_contributes_nothing():
    layer = Hopfield(8, add_zero_association=True, input_bias=False, rngs=nnx.Rngs(0))
    x = normal(5, 2, 5, 8)
    out, xi = layer(x, return_association=True)
    assert xi.shape[-1] == 6 and np.all(np.asarray(xi[..., -1]) > 0)
    # Reference: attention over the real patterns with the zero pattern's weight left out.
    q, k, v = layer.project(x, x, x)
    logits = jnp.einsum("bhld,bhsd->bhls", q, k) * layer.beta()[0]
    weights = jnp.exp(logits) / (jnp.exp(logits).sum(-1, keepdims=True) + 1.0)
    expected = jnp.einsum("bhls,bhsp->blhp", weights, v).reshape(2, 5, -1) @ layer.out_kernel[...]
    np.testing.assert_allclose(out, expected + layer.out_bias[...], atol=1e-6)


def test_hopfield_space_norm_makes_the_association_scale_free():
    layer = Hopfield(8, num_heads=2, normalize_hopfield_space=True, normalize_hopfield_space_eps=1e-12,
                     rngs=nnx.Rngs(0))
    x = normal(6, 2, 5, 8)
    _, xi = layer(x, return_association=True)
    for proj in (layer.q_proj, layer.k_proj):
        proj.kernel[...] = proj.kernel[...] * 1000.0
        proj.bias[...] = proj.bias[...] * 1000.0
    _, xi_scaled = layer(x, return_association=True)
    np.testing.assert_allclose(xi, xi_scaled, atol=1e-5)


def test_connected_projection_projects_the_projected_keys():
    layer = Hopfield(8, num_heads=2, pattern_projection_as_connected=True,
                     normalize_pattern_projection=False, rngs=nnx.Rngs(0))
    x = normal(7, 1, 4, 8)
    q, k, v = layer.project(x, x, x)
    np.testing.assert_allclose(v, jnp.einsum("bhsd,hde->bhse", k, layer.v_proj[...]), atol=1e-6)


def test_learnable_per_head_beta_gets_a_gradient():
    layer = Hopfield(8, num_heads=2, scaling=[0.5, 2.0], scaling_learnable=True, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(layer.beta(), [0.5, 2.0], rtol=1e-6)
    x = normal(8, 2, 5, 8)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
    assert np.all(np.abs(np.asarray(grads["log_beta"][...])) > 0)


def test_layer_energy_decreases_with_update_steps():
    layer = Hopfield(8, num_heads=2, scaling=0.5, rngs=nnx.Rngs(0))
    x = normal(9, 2, 6, 8)
    energies = np.stack([layer.energy(x, step=t) for t in range(4)])
    assert energies.shape == (4, 2, 2, 6)
    assert np.all(np.diff(energies, axis=0) <= 1e-5)


def test_association_activation_and_dropout():
    x = normal(10, 2, 5, 8)
    plain = Hopfield(8, rngs=nnx.Rngs(0))
    tanh = Hopfield(8, association_activation="tanh", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(tanh(x), jnp.tanh(plain(x)), atol=1e-6)
    dropped = Hopfield(8, dropout=0.5, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(dropped(x), plain(x), atol=1e-6)  # eval mode: no dropout
    from jaxlab.layers.common import training_mode
    with training_mode(0):
        assert not np.allclose(dropped(x), plain(x))
    with pytest.raises(ConfigError, match="association_activation"):
        Hopfield(8, association_activation="cosh", rngs=nnx.Rngs(0))


def test_pooling_is_permutation_invariant_and_ignores_masked_instances():
    pool = HopfieldPooling(8, quantity=2, num_heads=2, update_steps_max=2, rngs=nnx.Rngs(0))
    bag = normal(11, 3, 6, 8)
    mask = jnp.array([[1, 1, 1, 1, 0, 0]] * 3, bool)
    out, xi = pool(bag, key_mask_bs=mask, return_association=True)
    assert out.shape == (3, 2 * 8)
    assert np.all(np.asarray(xi[..., 4:]) == 0.0)
    # Changing the masked instances changes nothing.
    garbage = bag.at[:, 4:].set(100.0)
    np.testing.assert_allclose(pool(garbage, key_mask_bs=mask), out, atol=1e-6)
    order = np.random.default_rng(0).permutation(6)
    np.testing.assert_allclose(pool(bag[:, order], key_mask_bs=mask[:, order]), out, atol=1e-5)


def test_hopfield_layer_is_permutation_equivariant():
    layer = HopfieldLayer(8, quantity=5, num_heads=2, update_steps_max=1,
                          lookup_weights_as_separated=True, lookup_targets_as_trainable=False,
                          rngs=nnx.Rngs(0))
    params = nnx.state(layer, nnx.Param)
    assert "lookup_weights" in params and "target_weights" not in params  # frozen targets
    states = normal(12, 2, 7, 8)
    order = np.random.default_rng(1).permutation(7)
    np.testing.assert_allclose(layer(states)[:, order], layer(states[:, order]), atol=1e-5)


def test_static_role_size_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="hidden_size"):
        Hopfield(8, hidden_size=4, stored_pattern_as_static=True, rngs=nnx.Rngs(0))


def test_static_lookup_with_one_hot_targets_is_nearest_neighbour_at_large_beta():
    rng = np.random.default_rng(13)
    points = rng.normal(size=(40, 8)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)  # argmax dot = nearest neighbour
    labels = rng.integers(0, 3, size=40)
    layer = HopfieldLayer(8, quantity=40, hidden_size=8, scaling=1e4, trainable=False,
                          lookup_weights_as_separated=True, pattern_projection_size=3,
                          stored_pattern_as_static=True, state_pattern_as_static=True,
                          pattern_projection_as_static=True, disable_out_projection=True,
                          normalize_stored_pattern=False, normalize_state_pattern=False,
                          normalize_pattern_projection=False, rngs=nnx.Rngs(0))
    layer.lookup_weights[...] = jnp.asarray(points)[None]
    layer.target_weights[...] = jax.nn.one_hot(labels, 3)[None]
    queries = points[:10] + 0.05 * rng.normal(size=(10, 8)).astype(np.float32)
    votes = layer(jnp.asarray(queries)[None])[0]
    nearest = np.argmin(((queries[:, None] - points[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(np.argmax(votes, -1), labels[nearest])
    np.testing.assert_allclose(votes.max(-1), 1.0, atol=1e-4)  # a hard (1-NN) vote
