"""The Qwen-VL vision tower as the head sees it: its blocks, their outputs as per-image patch grids, LoRA names.

Block outputs are (total patches, D) for the whole batch, in the processor's patch order
(t, h/m, w/m, m, m) per image; Qwen2.5-VL additionally permutes merge units into attention windows
before the blocks, which `unpermute` undoes with the tower's own `get_window_index` (`patch_order`).
"""
from __future__ import annotations

import torch
from torch import nn

# Linear layers of one ViT block, per family (LoRA on ViT blocks targets exactly these).
VIT_BLOCK_LINEARS = {
    "qwen2_vl": ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"),
    "qwen2_5_vl": ("attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "qwen3_vl": ("attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2"),
}
# LM LoRA on the attention projections: names no ViT module contains, so substring matching
# (LLaMA-Factory's lora_target) and suffix matching (PEFT) select the same layers.
LM_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


def find_visual(model: nn.Module) -> nn.Module:
    """The vision tower inside a Qwen-VL model (plain, PEFT-wrapped or DDP-wrapped)."""
    for module in model.modules():
        if hasattr(module, "blocks") and hasattr(module, "merger") and hasattr(module, "patch_embed"):
            return module
    raise ValueError(f"no Qwen-VL vision tower (blocks + merger + patch_embed) in {type(model).__name__}")


def lora_targets(family: str, vit_blocks: tuple[int, ...], lm: bool) -> list[str]:
    """Module-name pieces for LoRA: `blocks.<i>.<linear>` per chosen ViT block (+ the LM attention)."""
    if family not in VIT_BLOCK_LINEARS:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(VIT_BLOCK_LINEARS)}")
    names = [f"blocks.{b}.{linear}" for b in vit_blocks for linear in VIT_BLOCK_LINEARS[family]]
    return names + (list(LM_LINEARS) if lm else [])


def lora_target_regex(targets: list[str]) -> str:
    """One regex over full module names for the same targets (ms-swift --target_regex, PEFT str targets)."""
    return r"^(.*\.)?(" + "|".join(t.replace(".", r"\.") for t in targets) + r")$"


def patch_order(visual: nn.Module, grid_thw: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The row index on `device` that puts block outputs back into processor patch order, or None where the
    tower keeps that order (only Qwen2.5-VL's window attention permutes). Built on the host, sent without a wait."""
    if not hasattr(visual, "get_window_index"):
        return None
    window_index, _ = visual.get_window_index(grid_thw)
    return torch.argsort(window_index).to(device, non_blocking=True)


def unpermute(visual: nn.Module, states: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Block output rows back into processor patch order (`order`: patch_order's index)."""
    if order is None:
        return states
    unit = visual.spatial_merge_unit
    return states.reshape(-1, unit, states.shape[-1])[order].reshape(states.shape)


def patch_grids(states: torch.Tensor, grid_thw: list[list[int]], merge: int) -> list[torch.Tensor]:
    """(total patches, D) in processor order -> one (D, H, W) map per image (frames averaged); `grid_thw` is the
    images' (t, h, w) as host integers."""
    grids, offset = [], 0
    for t, h, w in grid_thw:
        n = t * h * w
        x = states[offset:offset + n].reshape(t, h // merge, w // merge, merge, merge, -1)
        grids.append(x.permute(0, 5, 1, 3, 2, 4).reshape(t, -1, h, w).mean(0))
        offset += n
    return grids


class BlockCapture:
    """Keeps the outputs of the chosen ViT blocks and the grid of the last vision call.

    A block's output is read as the input of the module after it (next block, or the merger): under
    gradient checkpointing a block's own forward hooks run inside the checkpoint without autograd, while
    the next module receives the tensor that carries the graph back into the ViT (and its LoRA)."""

    def __init__(self, visual: nn.Module, blocks: tuple[int, ...]):
        self.visual, self.blocks = visual, blocks
        self.outputs: dict[int, torch.Tensor] = {}
        self.grid_thw: torch.Tensor | None = None
        self.handles = [visual.register_forward_pre_hook(self._grid, with_kwargs=True)]
        for b in blocks:
            after = visual.blocks[b + 1] if b + 1 < len(visual.blocks) else visual.merger
            self.handles.append(after.register_forward_pre_hook(self._keeper(b), with_kwargs=True))

    def _grid(self, module, args, kwargs):
        self.grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]

    def _keeper(self, index: int):
        def keep(module, args, kwargs):
            # a checkpointed next block runs again in backward and stores the same value again then
            self.outputs[index] = args[0] if args else kwargs["hidden_states"]
        return keep

    def grids(self) -> list[list[torch.Tensor]]:
        """Per chosen block, the per-image (D, H, W) maps of the last vision forward."""
        if self.grid_thw is None or len(self.outputs) != len(self.blocks):
            raise RuntimeError("the vision tower has not run on this batch (no pixel_values?)")
        merge = self.visual.spatial_merge_size
        grid_thw = self.grid_thw.cpu()  # the host reads the grid once for every block
        states = [self.outputs[b] for b in self.blocks]
        order = patch_order(self.visual, grid_thw, states[0].device)
        sizes = grid_thw.tolist()
        return [patch_grids(unpermute(self.visual, s, order), sizes, merge) for s in states]

    def clear(self) -> None:
        self.outputs.clear()
        self.grid_thw = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
