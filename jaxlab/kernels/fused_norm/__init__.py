"""Fused RMSNorm / LayerNorm with an optional residual add."""
from jaxlab.kernels.fused_norm.api import fused_norm  # noqa: F401
