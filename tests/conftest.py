"""Every test process sees 8 fake CPU devices, so sharding runs without an accelerator."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXLAB_DISTRIBUTED", "0")
# Mosaic GPU's interpreter runs each warpgroup as an XLA computation on a thread of its own,
# and their host callbacks (barrier waits among them) share the CPU client's thread pool,
# NPROC threads (default: the cores). On a 2-core machine a kernel whose warpgroups wait on
# one another could block every pool thread and hang: with NPROC=1 every Mosaic GPU
# backward did; with 2, 3 of 8 benchmark runs of the ones whose warpgroups meet in SMEM.
os.environ.setdefault("NPROC", "8")
# Tests compile many identical programs (the smoke GPT's train and eval steps recur across the
# experiments and the resume tests); XLA's persistent cache, shared by the xdist workers,
# compiles each once. Keyed by the program, the jax version and the flags, so a stale entry
# is never reused.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests' programs are small and run a few steps, so optimizing their machine code costs
# more time than it saves: with jax's switch (XLA:CPU at backend optimization level 0, LLVM's
# costly passes off) the default run took half as long on 2 cores, 9:15 against 18:43.
# Benchmarks, the CLI and the notebooks outside the tests keep every optimization; a test whose
# time goes to running, not compiling, takes the fully_optimized fixture below.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture
def fully_optimized():
    """XLA's full optimization for one test, whatever JAX_DISABLE_MOST_OPTIMIZATIONS says."""
    flag = "jax_disable_most_optimizations"
    was = jax.config.values[flag]
    jax.config.update(flag, False)
    yield
    jax.config.update(flag, was)


@pytest.fixture(autouse=True, scope="module")
def release_compiled_programs():
    """XLA:CPU maps each compiled program's code into memory regions of its own, and jax's
    caches keep every program alive; past the kernel's limit of 65530 regions per process
    (vm.max_map_count) the next compile segfaults. A worker of the default run reached 25k
    by its end; dropping the caches after each module keeps a worker at one module's count."""
    yield
    jax.clear_caches()
