"""Shared checks: the kernel path's values and VJP against the XLA reference's."""
import jax
import jax.numpy as jnp
import numpy as np

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def assert_matches_reference(kernel_fn, reference_fn, args, dtype, grad_scale=2.0):
    """Values to the dtype's tolerance, relative to the reference's largest entry; gradients
    (VJP with a random cotangent) to grad_scale × that."""
    out, vjp = jax.vjp(kernel_fn, *args)
    ref, ref_vjp = jax.vjp(reference_fn, *args)
    tol = TOLERANCE[dtype]
    close(out, ref, tol)
    cotangent = jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(7), x.shape, jnp.float32).astype(x.dtype), out)
    for got, want in zip(vjp(cotangent), ref_vjp(cotangent)):
        if want is not None:
            close(got, want, grad_scale * tol)


def close(got, want, tol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=tol * max(1.0, float(np.abs(w).max())), rtol=0)
