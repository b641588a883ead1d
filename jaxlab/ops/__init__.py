"""Pure jax.numpy math: no parameters, no Flax, nothing else of ours imported."""
