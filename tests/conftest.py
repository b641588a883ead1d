"""Every test process sees 8 fake CPU devices, so sharding runs without an accelerator."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAXLAB_DISTRIBUTED", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
