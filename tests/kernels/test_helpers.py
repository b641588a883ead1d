"""The parity check itself: its 16-bit fallback (the kernel as accurate as the reference, both
measured from the reference in float32) passes rounding noise and still catches a wrong VJP."""
import jax
import jax.numpy as jnp
import pytest

from jaxlab.kernels.linear_attention import chunked_linear_attention
from tests.kernels.helpers import (TOLERANCE, assert_matches_reference, close, float32_answers,
                                   with_changed_gradient)


def one_token_through_rmsnorm(q, k, v, gain):
    """Ill-conditioned on purpose: the output RMSNorm undoes φ(q)·φ(k)'s size, so the true dq
    and dk are nearly 0 and bf16 rounding dominates them."""
    return chunked_linear_attention(q, k, v, gain, feature_map="relu", normalize=False,
                                    scale=0.2, output_norm=True, chunk_size=8, impl="xla")


def inputs():
    keys = jax.random.split(jax.random.key(1), 3)
    q, k, v = (jax.random.normal(key, (2, 1, 2, 8)).astype(jnp.bfloat16) for key in keys)
    return q, k, v, jnp.ones((8,))


def test_the_reference_alone_misses_the_tolerance_here():
    """The case the fallback exists for: bf16 rounding moves the reference's own dk from its
    float32 value by more than the 2e-2 tolerance."""
    args = inputs()
    cotangent = jax.random.normal(jax.random.key(7), (2, 1, 2, 8)).astype(jnp.bfloat16)
    dk = jax.vjp(one_token_through_rmsnorm, *args)[1](cotangent)[1]
    dk32 = float32_answers(one_token_through_rmsnorm, args, cotangent)[2]  # values, dq, dk, …
    with pytest.raises(AssertionError):
        close(dk, dk32, 2 * TOLERANCE[jnp.bfloat16])


def test_a_wrong_gradient_fails_even_where_the_reference_is_noisy():
    with pytest.raises(AssertionError, match="more than twice the reference's"):
        assert_matches_reference(with_changed_gradient(one_token_through_rmsnorm, 1,
                                                       lambda dk: 3 * dk + 0.05),
                                 one_token_through_rmsnorm, inputs(), jnp.bfloat16)

