"""Attention with q/k normalization fused in, softmax or softplus (ℓ1) normalized."""
from jaxlab.kernels.norm_attention.api import fused_norm_attention  # noqa: F401
