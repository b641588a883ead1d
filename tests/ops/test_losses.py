"""Cross entropy, z-loss and accuracy against numpy and hand-made examples."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.ops.losses import accuracy, softmax_cross_entropy, z_loss

V = 7


def random_logits_and_targets(seed=0, shape=(2, 5)):
    rng = np.random.default_rng(seed)
    return (3.0 * rng.standard_normal(shape + (V,))).astype(np.float32), rng.integers(0, V, shape)


def numpy_log_softmax(logits):
    logits = logits.astype(np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return np.log(probs)


def test_cross_entropy_is_minus_log_softmax_of_target():
    logits, targets = random_logits_and_targets()
    want = -np.take_along_axis(numpy_log_softmax(logits), targets[..., None], -1)[..., 0]
    got = softmax_cross_entropy(logits, targets)
    assert got.shape == targets.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_cross_entropy_of_uniform_logits_is_log_vocab():
    targets = np.array([[0, 3, 6]])
    got = softmax_cross_entropy(np.full((1, 3, V), 2.5, np.float32), targets)
    np.testing.assert_allclose(got, np.log(V), rtol=1e-6)


def test_cross_entropy_of_bfloat16_logits_is_float32():
    logits, targets = random_logits_and_targets(1)
    got = softmax_cross_entropy(jnp.asarray(logits, jnp.bfloat16), targets)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, softmax_cross_entropy(logits, targets), rtol=5e-2, atol=5e-2)


def test_cross_entropy_grad_is_softmax_minus_onehot():
    logits, targets = random_logits_and_targets(2)
    grad = jax.grad(lambda l: softmax_cross_entropy(l, targets).sum())(logits)
    want = np.exp(numpy_log_softmax(logits)) - np.eye(V)[targets]
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


def test_z_loss_is_squared_logsumexp():
    logits, _ = random_logits_and_targets(3)
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(z_loss(logits), lse ** 2, rtol=1e-5)


def test_z_loss_is_zero_for_normalized_logits():
    probs = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    np.testing.assert_allclose(z_loss(np.log(probs)[None]), [0.0], atol=1e-10)
    assert z_loss(np.zeros((1, 4), np.float32))[0] > 1.0  # log(4)^2 ≈ 1.92


def test_accuracy_on_hand_made_example():
    logits = np.array([[[0.1, 2.0, 0.3], [5.0, 1.0, 0.0]],
                       [[0.0, 0.0, 9.0], [1.0, 3.0, 2.0]]], np.float32)  # argmax: 1 0 / 2 1
    targets = np.array([[1, 2], [2, 0]])
    got = accuracy(logits, targets)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, [[1.0, 0.0], [1.0, 0.0]])
