"""sdpa without its cuDNN backend, for batches whose shapes keep changing.

On Hopper, PyTorch's `scaled_dot_product_attention` prefers cuDNN's attention. cuDNN builds an execution plan on
the host for every new combination of shapes and caches it; on fixed-size data that happens once, on COCO-shaped
data every micro-step brings a new LM sequence length and new vision segment lengths, and the GPU waits while the
plan is built (docs/performance.md, run U). PyTorch's own flash and memory-efficient kernels take any length with
no plan. The kernels compute the same attention; only the order of floating-point operations differs.
"""
from __future__ import annotations

import torch


def skip_cudnn_attention() -> int:
    """Switch off sdpa's cuDNN backend for this process; returns 1 if it was on, else 0."""
    if not torch.backends.cuda.cudnn_sdp_enabled():
        return 0
    torch.backends.cuda.enable_cudnn_sdp(False)
    return 1
