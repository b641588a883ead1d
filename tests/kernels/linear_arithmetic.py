"""The yardstick of the chunked linear-attention kernels in 16 bits: exact float32 math with
the roundings the kernels make by design, and only those.

The kernels feed their matrix units 16-bit operands and accumulate in float32. Within a chunk:
φ(q), φ(k) and v, the causal weights a = φ(q)φ(k)ᵀ before a·v (the denominator sums the same
rounded weights), G = ∂L/∂num and P = ∂L/∂a before their products. Across chunks: the state
S = Σ φ(k)ᵀv of the earlier chunks (a float32 sum of rounded products) before φ(q)·S, and its
gradient dS before its products; z = Σ φ(k) and dz stay float32, as does everything between
the products (the denominator, the output RMSNorm and its backward). So the yardstick keeps
the kernels' chunks: where a chunk begins decides which sums are rounded as a whole.

Where an RMSNorm of a near-zero output multiplies the gradients by its rstd (212 in a soak's
case), rounding G alone moves dq further from float32 than the 16-bit tolerance, while the
float32 reference, which rounds nothing, stays well inside it. Where the reference check fails,
`assert_matches_reference` also accepts a kernel that matches these answers to the tolerance
(while they stay near float32); a mistake in the kernels' math misses both. In float32 they
are the kernels' order of operations without 16-bit rounding: how far float32 itself lands
from the float64 answer when the math cancels. In float64 they are the reference's answers
(tests/kernels/test_linear_attention_kernel.py checks that).
"""
import jax
import jax.numpy as jnp

# The kernels' own padding and sums over earlier chunks: plumbing, not arithmetic, and the
# float64 test against the reference would catch a fault in them.
from jaxlab.kernels.linear_attention.api import _layout, _unlayout
from jaxlab.kernels.linear_attention.pallas import _exclusive_cumsum
from jaxlab.ops.linear_attention import FEATURE_MAPS
from jaxlab.ops.norms import compute_dtype
from tests.kernels.helpers import rounding_to

HIGHEST = jax.lax.Precision.HIGHEST


def linear_answers(options, chunk, dtype):
    """yardstick(args, cotangent, kernel output) for `assert_matches_reference`, args
    (q, k, v, gain) and options the op's keywords (feature_map, normalize, scale, output_norm;
    eps and norm_eps as the op's defaults unless given)."""
    def answers(args, cotangent, kernel_out):
        del kernel_out  # the kernels recompute the output in float32; they do not read it
        return rounded_linear(*args, cotangent, chunk=chunk, dtype=dtype, **options)
    return answers


def _chunked(x, chunk, work):
    """[b, t, h, d] -> [b, h, n, chunk, d] in `work`, zero-padded at the end as the kernels are."""
    x = _layout(x.astype(work), chunk)
    return x.reshape(x.shape[:2] + (-1, chunk, x.shape[-1]))


def _unchunked(x, t):
    """The inverse of _chunked."""
    return _unlayout(x.reshape(x.shape[:2] + (-1, x.shape[-1])), t)


def rounded_linear(q, k, v, gain, cotangent, *, chunk, dtype, feature_map="elu1",
                   normalize=True, scale=1.0, eps=1e-6, output_norm=False, norm_eps=1e-6):
    """[out, dq, dk, dv, dgain] of the kernels' arithmetic for the cotangent (dgain 0 without
    the output norm)."""
    rounded = rounding_to(dtype)
    product = lambda spec, x, y: jnp.einsum(spec, rounded(x), rounded(y), precision=HIGHEST)
    t = q.shape[1]
    work = compute_dtype(dtype)  # float64 only for exact answers in tests
    q_raw, k_raw, v = (_chunked(x, chunk, work) for x in (q, k, v))
    phi = FEATURE_MAPS[feature_map]
    (q_phi, q_phi_vjp), (k_phi, k_phi_vjp) = jax.vjp(phi, q_raw), jax.vjp(phi, k_raw)
    causal = jnp.tril(jnp.ones((chunk, chunk), work))
    gain = jnp.ones(v.shape[-1], work) if gain is None else gain.astype(work)

    state = _exclusive_cumsum(product("bhnck,bhncv->bhnkv", k_phi, v))
    z = _exclusive_cumsum(k_phi.sum(3))                                 # [b, h, n, dk]
    weights = rounded(product("bhntk,bhnjk->bhntj", q_phi, k_phi) * causal)
    num = (product("bhntj,bhnjv->bhntv", weights, v)
           + product("bhntk,bhnkv->bhntv", q_phi, state))
    den = weights.sum(-1) + jnp.einsum("bhntk,bhnk->bhnt", q_phi, z, precision=HIGHEST)
    o = num / (den[..., None] + eps) if normalize else num * scale
    y, d_y = o, _chunked(cotangent, chunk, work)
    d_gain = jnp.zeros_like(gain)
    if output_norm:
        rstd = jax.lax.rsqrt(jnp.mean(o * o, -1, keepdims=True) + norm_eps)
        y = o * rstd * gain
        d_gain = jnp.sum(d_y * o * rstd, axis=(0, 1, 2, 3))
        d_hat, o_hat = d_y * gain, o * rstd
        d_y = rstd * (d_hat - o_hat * jnp.mean(d_hat * o_hat, -1, keepdims=True))

    if normalize:  # H = ∂L/∂den is taken of G as the products read it
        inverse = 1 / (den + eps)
        g = rounded(d_y * inverse[..., None])
        h = -jnp.sum(g * num, -1) * inverse
    else:
        g, h = d_y * scale, jnp.zeros_like(den)
    p = (product("bhntv,bhnjv->bhntj", g, v) + h[..., None]) * causal   # ∂L/∂a
    d_state = _exclusive_cumsum(product("bhntk,bhntv->bhnkv", q_phi, g), reverse=True)
    d_z = _exclusive_cumsum(jnp.einsum("bhnt,bhntk->bhnk", h, q_phi, precision=HIGHEST),
                            reverse=True)
    d_q_phi = (product("bhntj,bhnjk->bhntk", p, k_phi)
               + product("bhntv,bhnkv->bhntk", g, state) + h[..., None] * z[:, :, :, None])
    d_k_phi = (product("bhntj,bhntk->bhnjk", p, q_phi)
               + product("bhnjv,bhnkv->bhnjk", v, d_state) + d_z[:, :, :, None])
    d_v = (product("bhntj,bhntv->bhnjv", weights, g)
           + product("bhnjk,bhnkv->bhnjv", k_phi, d_state))
    (d_q,), (d_k,) = q_phi_vjp(d_q_phi), k_phi_vjp(d_k_phi)
    out = _unchunked(y, t).astype(dtype)
    return [out] + [_unchunked(x, t).astype(dtype) for x in (d_q, d_k, d_v)] + [d_gain]
