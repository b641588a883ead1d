"""Pallas kernels with XLA references; each op folder has reference.py, pallas.py and api.py.

`impl` chooses the path: "xla" (the reference, always available), "pallas" (compiled for the
GPU or TPU), "interpret" (the Pallas kernel run by the interpreter, so CPU tests exercise the
kernel's own code), or "auto" (Pallas on GPU/TPU when the shapes are supported, else XLA;
except where a GPU measured another path faster: plain softmax norm-attention goes to cuDNN,
the fused norm to XLA).
`last_path(op)` says which path the most recent trace of `op` took.

On a Hopper GPU, norm-attention also runs as Mosaic GPU kernels (wgmma, TMA, warp
specialization; norm_attention/mosaic_gpu.py and mosaic_backward.py, jax ≥ 0.11):
`fused_norm_attention(..., gpu_kernel=)` "auto" (the default) takes them there where they fit
the inputs, "triton" and "mosaic" pick one; last_path then says "mosaic".
"""
from jaxlab.kernels.dispatch import IMPLS, last_path, resolve  # noqa: F401
