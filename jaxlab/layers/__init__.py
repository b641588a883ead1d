"""Thin Flax NNX modules over jaxlab.ops. Importing this package fills the layer registries."""
from jaxlab.layers import attention, blocks, embed, ffn, norms  # noqa: F401  (registration)
from jaxlab.layers import attention_kinds, linear_attention  # noqa: F401  (registration)
from jaxlab.layers.common import Dense, param  # noqa: F401
from jaxlab.layers.hopfield import Hopfield, HopfieldLayer, HopfieldPooling  # noqa: F401
from jaxlab.layers import macaron  # noqa: F401  (registration)
from jaxlab.layers.kan import GroupRational, KANLinear  # noqa: F401  (registration: kan, grkan, polyrelu, polynorm)
