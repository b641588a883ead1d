"""Shared checks: the kernel path's values and VJP against the XLA reference's."""
import os

import jax
import jax.numpy as jnp
import numpy as np

# The parity tests run the kernels interpreted on the CPU; on a GPU machine,
# JAXLAB_TEST_KERNELS=pallas runs the same tests on the compiled kernels (with
# JAX_DEFAULT_MATMUL_PRECISION=highest, so that the float32 references are not TF32).
KERNEL_IMPL = os.environ.get("JAXLAB_TEST_KERNELS", "interpret")
COMPILED = KERNEL_IMPL == "pallas"
# The Triton kernels need power-of-two sizes of at least 16; the interpreter takes any.
SMALL_DIMS = [16, 32] if COMPILED else [8, 16]

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2, jnp.float16: 1e-2}


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
