"""jaxlab: research layers, sharded training and paper reproductions in JAX / Flax NNX."""
from jaxlab import host_memory as _host_memory

# Before anything starts JAX's CPU backend: see jaxlab/host_memory.py for why.
_host_memory.keep_freed_memory()
