"""Shared checks: the kernel path's values and VJP against the XLA reference's."""
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import settings

# The parity tests run the kernels interpreted on the CPU; on a GPU machine,
# JAXLAB_TEST_KERNELS=pallas runs the same tests on the compiled kernels (with
# JAX_DEFAULT_MATMUL_PRECISION=highest, so that the float32 references are not TF32).
KERNEL_IMPL = os.environ.get("JAXLAB_TEST_KERNELS", "interpret")
COMPILED = KERNEL_IMPL == "pallas"
# The Triton kernels need power-of-two sizes of at least 16; the interpreter takes any.
SMALL_DIMS = [16, 32] if COMPILED else [8, 16]

# The Hypothesis parity tests draw a few fixed (derandomized) examples, so CI stays fast and
# repeatable. JAXLAB_TEST_SOAK=N draws N times as many, fresh each run: a search for failing
# shapes, run on purpose (after a kernel change, or on a GPU with JAXLAB_TEST_KERNELS=pallas).
SOAK_VALUE = os.environ.get("JAXLAB_TEST_SOAK", "1")
if not SOAK_VALUE.isdigit() or int(SOAK_VALUE) < 1:
    raise ValueError(f"JAXLAB_TEST_SOAK={SOAK_VALUE!r}: expected a whole number ≥ 1")
SOAK = int(SOAK_VALUE)


def examples(n: int) -> settings:
    """Hypothesis settings for a parity test: n fixed examples, or n × SOAK fresh ones."""
    return settings(max_examples=n * SOAK, deadline=None, derandomize=SOAK == 1)


# How many soak draws run between releases of jax's caches (below).
RELEASE_EVERY = 25
_soak_draws = itertools.count(1)


def release_compiled_programs_when_soaking():
    """Each draw compiles programs of its own, XLA:CPU maps each one's code into memory regions
    of their own, and jax's caches keep them all: a linear-attention soak passed the kernel's
    limit of 65530 regions per process (vm.max_map_count) after a few hundred draws, and the
    next compile segfaulted. Parity checks call this before each draw; when soaking, every
    RELEASE_EVERY-th call drops the caches. Dropping them at every call also recompiles the
    programs the draws share, each time: 600 draws had not finished in 14 minutes, against
    11:40 this way. CI's few draws per test are covered by conftest's release after each
    module."""
    if SOAK > 1 and next(_soak_draws) % RELEASE_EVERY == 0:
        jax.clear_caches()


def rounding_to(dtype):
    """x ↦ x rounded to dtype's precision but kept in its own dtype: unlike a cast down and
    up, no compiler removes it. The yardsticks round with it where the kernels do."""
    info = jnp.finfo(dtype)
    return lambda x: jax.lax.reduce_precision(x, info.nexp, info.nmant)


def yardstick_beside_reference(yardstick, reference_fn, args):
    """(yardstick's, reference's) pairs of the values and each gradient, for one random
    cotangent: a yardstick run where its roundings do nothing must give the reference's."""
    release_compiled_programs_when_soaking()
    out, vjp = jax.vjp(reference_fn, *args)
    cotangent = jax.random.normal(jax.random.key(7), out.shape, out.dtype)
    return zip(yardstick(args, cotangent, out), [out, *vjp(cotangent)])


TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2, jnp.float16: 1e-2}
# How far past the tolerance a kernel's 16-bit arithmetic (its yardstick) may land and still
# count as rounding: the soak cases it admits missed by 1.1× (a gain's gradient over 92 rows)
# and 2.1× (a near-zero output under an RMSNorm). A flaw in where a kernel rounds can land
# further, as the linear kernels' unrounded denominator did (dq 15× at t=5), or not (dk 1.6×
# at t=1): a net for gross flaws, not a proof of accuracy.
ROUNDING_SLACK = 4
# In float32, where the math cancels, how much further from float64 a kernel may land than the
# reference or the yardstick run in float32: which order of float32 operations lands closest
# is luck. Under XLA's full optimization an interpreted kernel landed 2.1× as far as both in a
# soak's case (rstd of a near-zero output), and half-ulp changes of its inputs alone move the
# exact answer a third of that. A kernel 0.1% off in dq lands 22× as far (test_helpers.py).
FLOAT32_SLACK = 4


def assert_matches_reference(kernel_fn, reference_fn, args, dtype, grad_scale=2.0,
                             yardstick=None):
    """Values to the dtype's tolerance, relative to the reference's largest entry; gradients
    (VJP with a random cotangent) to grad_scale × that. Where the math cancels (an RMSNorm of
    a near-zero output), rounding alone can exceed the tolerance; there the kernel passes if it
    is about as accurate as other arithmetic of the same math.
    yardstick(args, cotangent, kernel values), if given, returns the answers of exact math
    with the roundings the kernel makes by design (e.g. a flash backward's δ, taken of the
    16-bit output, or its 16-bit operands).
    16 bits: the kernel passes if it matches the yardstick to the tolerance while the
    yardstick is within ROUNDING_SLACK tolerances of the reference run in float32, or if it is
    at most twice as far from that as the reference is.
    float32: the kernel passes if it is at most FLOAT32_SLACK times as far from the reference
    run in float64 as the reference or the yardstick run in float32 are (the yardstick then
    rounds nothing but float32 does, in the kernel's order of operations). A reference that
    computes in float32 whatever it is given is its own float64 answer."""
    release_compiled_programs_when_soaking()
    out, vjp = jax.vjp(kernel_fn, *args)
    ref, ref_vjp = jax.vjp(reference_fn, *args)
    cotangent = jax.tree.map(
        lambda x: jax.random.normal(jax.random.key(7), x.shape, jnp.float32).astype(x.dtype), out)
    tol = TOLERANCE[dtype]
    answers = [(out, ref, tol)] + [
        (got, want, grad_scale * tol)
        for got, want in zip(vjp(cotangent), ref_vjp(cotangent)) if want is not None]
    in_float32 = dtype == jnp.float32
    truths = others = None
    for index, (got, want, leaf_tol) in enumerate(answers):
        try:
            close(got, want, leaf_tol)
        except AssertionError as mismatch:
            if truths is None:
                truths = (float64_answers if in_float32 else float32_answers)(
                    reference_fn, args, cotangent)
                others = None if yardstick is None else yardstick(args, cotangent, out)
            truth = truths[index]
            kernel_error, noise = distance(got, truth), distance(want, truth)
            if in_float32 and others is not None:  # float32 noise in the kernel's order, too
                noise = max(noise, distance(others[index], truth))
            elif (others is not None and matches(got, others[index], leaf_tol)
                    and matches(others[index], truth, ROUNDING_SLACK * leaf_tol)):
                continue
            slack = FLOAT32_SLACK if in_float32 else 2
            if kernel_error > slack * noise:
                exact = "float64" if in_float32 else "float32"
                raise AssertionError(
                    f"answer {index} (0: values, then gradients): {kernel_error:.3g} from the "
                    f"{exact} reference, more than {slack}× the "
                    f"{noise:.3g} of {'other arithmetic' if in_float32 else 'the reference'}"
                ) from mismatch


def with_changed_gradient(fn, index, change):
    """fn whose gradient to argument `index` is change(the true one): a wrong kernel, for
    checking that the parity check catches it."""
    @jax.custom_vjp
    def wrong(*args):
        return fn(*args)

    def backward(vjp, cotangent):
        grads = list(vjp(cotangent))
        grads[index] = change(grads[index])
        return tuple(grads)

    wrong.defvjp(lambda *args: jax.vjp(fn, *args), backward)
    return wrong


def to_float32(tree):
    """Every 16-bit array of the tree cast up to float32."""
    return jax.tree.map(
        lambda x: x.astype(jnp.float32) if x.dtype in (jnp.bfloat16, jnp.float16) else x, tree)


def to_float64(tree):
    """Every float array of the tree cast up to float64, as NumPy arrays (jax keeps them
    float64 only with x64 on)."""
    return jax.tree.map(
        lambda x: np.asarray(x, np.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _answers(reference_fn, args, cotangent):
    out, vjp = jax.vjp(reference_fn, *args)
    return [out] + [grad for grad in vjp(cotangent) if grad is not None]


def float32_answers(reference_fn, args, cotangent):
    """The reference's values and gradients with every 16-bit input cast up to float32."""
    return _answers(reference_fn, to_float32(args), to_float32(cotangent))


def float64_answers(reference_fn, args, cotangent):
    """The reference's values and gradients with every float input cast up to float64 (x64 on
    for the call), as NumPy arrays; exact answers where the reference computes in float64 when
    given it, and its float32 answers where it does not."""
    with jax.enable_x64(True):
        answers = _answers(reference_fn, to_float64(args), to_float64(cotangent))
        return [jax.tree.map(np.asarray, answer) for answer in answers]


def distance(got, want) -> float:
    """The largest absolute difference over all leaves, in float64."""
    return max(float(np.abs(np.asarray(g, np.float64) - np.asarray(w, np.float64)).max())
               for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


def matches(got, want, tol) -> bool:
    """Whether `close` holds."""
    try:
        close(got, want, tol)
    except AssertionError:
        return False
    return True


def close(got, want, tol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=tol * max(1.0, float(np.abs(w).max())), rtol=0)
