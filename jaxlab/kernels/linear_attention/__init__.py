"""Causal chunked linear attention with feature map, denominator and output-norm epilogue."""
from jaxlab.kernels.linear_attention.api import chunked_linear_attention  # noqa: F401
