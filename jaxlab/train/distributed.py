"""Multi-host start-up through jax.distributed."""
from __future__ import annotations

import os

import jax

# Any of these means a launcher started several cooperating processes.
CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
               "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
_initialized = False


def wanted() -> bool:
    flag = os.environ.get("JAXLAB_DISTRIBUTED")
    if flag is not None:
        return flag not in ("0", "", "false")
    return any(name in os.environ for name in CLUSTER_ENV)


def maybe_initialize() -> None:
    """Calls jax.distributed.initialize() once when the environment asks for several processes.

    Set JAXLAB_DISTRIBUTED=0 to force a single process, =1 to force initialization; with
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID jax reads its arguments
    from the environment, and on TPU pods and Slurm it discovers them itself.
    """
    global _initialized
    if _initialized or not wanted():
        return
    # CPU processes exchange collectives through gloo; accelerators ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
        for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
            if env in os.environ:
                kwargs[key] = int(os.environ[env])
    jax.distributed.initialize(**kwargs)
    _initialized = True
