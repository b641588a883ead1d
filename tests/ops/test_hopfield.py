"""jaxlab.ops.hopfield against closed forms and naive loops."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.ops import hopfield


def masked_queries(seed, trials=100, dim=128, num=1000):
    rng = np.random.default_rng(seed)
    patterns = rng.choice([-1.0, 1.0], size=(num, dim)).astype(np.float32)
    picks = rng.integers(0, num, size=trials)
    queries = patterns[picks].copy()
    queries[:, dim // 2:] = 0.0  # half of every query is unknown
    return jnp.asarray(patterns), jnp.asarray(queries), patterns[picks]


def test_one_update_retrieves_the_stored_pattern_at_beta_one():
    patterns, queries, targets = masked_queries(0)
    retrieved = np.asarray(hopfield.retrieve(queries, patterns, 1.0, steps=1))
    exact = np.max(np.abs(retrieved - targets), axis=1) < 1e-6
    assert exact.mean() >= 0.99


def test_small_beta_gives_a_metastable_mixture():
    patterns, queries, targets = masked_queries(1)
    retrieved = np.asarray(hopfield.retrieve(queries, patterns, 0.1, steps=1))
    assert np.mean(np.max(np.abs(retrieved - targets), axis=1)) > 0.3


def naive_energy(xi, stored, beta):
    logits = beta * stored @ xi
    lse = np.log(np.sum(np.exp(logits - logits.max()))) / beta + logits.max() / beta
    max_norm = np.max(np.linalg.norm(stored, axis=1))
    return -lse + 0.5 * xi @ xi + np.log(len(stored)) / beta + 0.5 * max_norm ** 2


def test_energy_matches_the_formula_and_its_gradient_is_the_update_residual():
    rng = np.random.default_rng(2)
    stored = rng.normal(size=(20, 6))
    states = rng.normal(size=(3, 6))
    beta = 0.7
    with jax.enable_x64(True):
        energies = hopfield.energy(jnp.asarray(states), jnp.asarray(stored), beta)
        np.testing.assert_allclose(energies, [naive_energy(s, stored, beta) for s in states], rtol=1e-10)
        # ∇E(ξ) = ξ − Xᵀ softmax(βXξ): one CCCP update is exactly ξ − ∇E.
        grad = jax.grad(lambda s: hopfield.energy(s, jnp.asarray(stored), beta).sum())(jnp.asarray(states))
        update = hopfield.retrieve(jnp.asarray(states), jnp.asarray(stored), beta, steps=1)
        np.testing.assert_allclose(grad, states - update, atol=1e-10)


def test_energy_never_increases_across_updates():
    rng = np.random.default_rng(3)
    stored = jnp.asarray(rng.normal(size=(200, 32)), jnp.float32)
    xi = jnp.asarray(rng.normal(size=(16, 32)), jnp.float32)
    energies = [hopfield.energy(xi, stored, 0.3)]
    for _ in range(10):
        xi = hopfield.retrieve(xi, stored, 0.3, steps=1)
        energies.append(hopfield.energy(xi, stored, 0.3))
    energies = np.stack(energies)
    assert np.all(np.diff(energies, axis=0) <= 1e-4 * np.abs(energies[:-1]))
    assert np.all(energies[-1] < energies[0])


def naive_associate(q, k, beta_h, steps_h, mask=None):
    """Per-head python loop: 1 + steps_h[h] softmaxes, q ← ξ k between them."""
    out = []
    for h in range(q.shape[1]):
        qh, kh = q[:, h], k[:, h]
        for t in range(steps_h[h] + 1):
            logits = beta_h[h] * jnp.einsum("bld,bsd->bls", qh, kh)
            if mask is not None:
                logits = jnp.where(mask[:, 0], logits, -1e30)
            xi = jax.nn.softmax(logits, axis=-1)
            qh = jnp.einsum("bls,bsd->bld", xi, kh)
        out.append(xi)
    return jnp.stack(out, axis=1)


def random_qk(seed, b=2, h=3, l=4, s=5, d=8):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(b, h, l, d)), jnp.float32),
            jnp.asarray(rng.normal(size=(b, h, s, d)), jnp.float32))


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_update_steps_max_runs_that_many_extra_softmaxes(steps):
    q, k = random_qk(4)
    beta = jnp.array([0.3, 0.5, 0.8])
    xi, count = hopfield.associate(q, k, beta_h=beta, update_steps_max=steps, update_steps_eps=0.0)
    np.testing.assert_array_equal(count, [steps + 1] * 3)
    np.testing.assert_allclose(xi, naive_associate(q, k, beta, [steps] * 3), atol=1e-6)

    def loss(fn, q, k):
        return jnp.sum(jnp.sin(fn(q, k)))
    ours = jax.grad(lambda q, k: loss(lambda a, b: hopfield.associate(
        a, b, beta_h=beta, update_steps_max=steps, update_steps_eps=0.0)[0], q, k), (0, 1))(q, k)
    naive = jax.grad(lambda q, k: loss(lambda a, b: naive_associate(a, b, beta, [steps] * 3), q, k),
                     (0, 1))(q, k)
    for a, b in zip(ours, naive):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_per_head_step_limits_and_early_stop():
    q, k = random_qk(5)
    beta = jnp.array([0.5, 0.5, 0.5])
    xi, count = hopfield.associate(q, k, beta_h=beta, update_steps_max=np.array([1, 3, 4]),
                                   update_steps_eps=np.array([0.0, 0.0, 1e9]))
    # Head 2 changes by less than 1e9 after its first update, so it stops there.
    np.testing.assert_array_equal(count, [2, 4, 2])
    np.testing.assert_allclose(xi, naive_associate(q, k, beta, [1, 3, 1]), atol=1e-6)


def test_a_converged_head_stops_changing():
    q, k = random_qk(6)
    k = k * 5.0  # large β·logits: the association saturates after one update
    beta = jnp.ones(3)
    xi_few, count_few = hopfield.associate(q, k, beta_h=beta, update_steps_max=3, update_steps_eps=1e-4)
    xi_many, count_many = hopfield.associate(q, k, beta_h=beta, update_steps_max=20, update_steps_eps=1e-4)
    assert np.all(np.asarray(count_many) < 21)
    np.testing.assert_allclose(xi_few, xi_many, atol=1e-4)


def test_masked_patterns_get_zero_weight():
    q, k = random_qk(7)
    key_mask = jnp.array([[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]], bool)
    assoc = jnp.tril(jnp.ones((4, 5), bool))
    mask = hopfield.combine_masks(key_mask, assoc)
    xi, _ = hopfield.associate(q, k, beta_h=jnp.ones(3), update_steps_max=2, mask=mask)
    assert mask.shape == (2, 1, 4, 5)
    assert np.all(np.asarray(xi)[~np.broadcast_to(np.asarray(mask), xi.shape)] == 0.0)
    np.testing.assert_allclose(np.asarray(xi).sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(
        xi, naive_associate(q, k, jnp.ones(3), [2] * 3, jnp.broadcast_to(mask, (2, 1, 4, 5))), atol=1e-6)
