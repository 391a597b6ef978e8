"""Qwen2.5-VL vision MLP with its intermediate width padded to a multiple of 128, for fast bf16 matmuls.

The Qwen2.5-VL vision tower (3B/7B/32B/72B alike) has MLP width 3420, which is not a multiple of 8: cuBLAS then
cannot use its Hopper kernels for the ViT's gate/up/down matmuls and falls back to an unaligned sm80 kernel
(docs/performance.md has the profile). Zero rows in gate/up and zero columns in down change nothing:
act(0) * 0 = 0 adds nothing to the down projection. The padded copies are non-persistent buffers, so checkpoints
keep the published shapes; the MLP uses them only while its weights are frozen plain Linear layers (LoRA on the
ViT or a trained ViT keeps transformers' own forward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from custom_modules.speedups.parts import vision_towers

ALIGN = 128


def _padded(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    pad = [0, 0] * (tensor.dim() - 1 - dim) + [0, size - tensor.shape[dim]]
    return F.pad(tensor.detach(), pad)


def _frozen_linears(mlp) -> bool:
    linears = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    return all(type(m) is nn.Linear and not any(p.requires_grad or hasattr(p, "ds_id") for p in m.parameters())
               for m in linears)


def align_mlp(mlp, multiple: int = ALIGN) -> bool:
    """Give one gate/up/down MLP a forward over padded copies of its frozen weights; False if nothing to do."""
    width = mlp.gate_proj.out_features
    size = -(-width // multiple) * multiple
    if size == width or not _frozen_linears(mlp) or hasattr(mlp, "aligned_down_weight"):
        return False
    for name in ("gate", "up"):
        linear = getattr(mlp, f"{name}_proj")
        mlp.register_buffer(f"aligned_{name}_weight", _padded(linear.weight, 0, size), persistent=False)
        mlp.register_buffer(f"aligned_{name}_bias", None if linear.bias is None else _padded(linear.bias, 0, size),
                            persistent=False)
    mlp.register_buffer("aligned_down_weight", _padded(mlp.down_proj.weight, 1, size), persistent=False)
    original = mlp.forward

    def forward(hidden_state):
        if not _frozen_linears(mlp):  # unfrozen after the fact: the copies would be stale
            return original(hidden_state)
        gate = F.linear(hidden_state, mlp.aligned_gate_weight, mlp.aligned_gate_bias)
        up = F.linear(hidden_state, mlp.aligned_up_weight, mlp.aligned_up_bias)
        return F.linear(mlp.act_fn(gate) * up, mlp.aligned_down_weight, mlp.down_proj.bias)

    mlp.forward = forward
    return True


def align_vision_mlps(model, multiple: int = ALIGN) -> int:
    """Align the MLPs of every Qwen-VL vision tower in `model` whose width is not a multiple of `multiple`;
    returns how many were aligned."""
    aligned = 0
    for tower in vision_towers(model):
        for module in tower.modules():
            if all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
                aligned += align_mlp(module, multiple)
    return aligned
