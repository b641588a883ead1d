"""Thin Flax NNX modules over jaxlab.ops. Importing this package fills the layer registries."""
from jaxlab.layers import attention, blocks, embed, ffn, norms  # noqa: F401  (registration)
from jaxlab.layers import attention_kinds, linear_attention  # noqa: F401  (registration)
from jaxlab.layers.common import Dense, param  # noqa: F401
