"""The Qwen-VL vision tower as the head sees it: its blocks, where their output rows lie on the images (the
batch's patch layout), LoRA names.

Block outputs are (total patches, D) for the whole batch, in the processor's patch order
(t, h/m, w/m, m, m) per image; Qwen2.5-VL additionally permutes merge units into attention windows
before the blocks, which `patch_layout` undoes with the tower's own `get_window_index`.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class PatchLayout:
    """Where a block output's rows go on the head's canvas, a (B, H, W) grid of patches padded to the batch's
    largest image: built once a batch on the host from the images' grids, so that the head reads every image
    with one gather and one scatter per block instead of slicing and permuting each image."""
    rows: torch.Tensor                  # (P, T): per image position, the block-output rows of its T frames
    frame_weight: torch.Tensor | None   # (P, T): 1/t for an image's frames, 0 past them; None when t == 1 for all
    canvas_index: torch.Tensor          # (P,): each position's flat index into the (B * H * W) canvas
    valid: torch.Tensor                 # (B, H, W): the canvas positions an image covers
    sizes: list[tuple[int, int]]        # each image's (h, w) patch grid


def patch_layout(visual: nn.Module, grid_thw: list[list[int]], device: torch.device) -> PatchLayout:
    """The layout of block outputs for images of these (t, h, w) grids, as host integers. Block rows come in the
    processor's patch order (t, h/m, w/m, m, m) per image; Qwen2.5-VL's window attention also permutes merge units
    into windows before the blocks, which the rows undo with the tower's own `get_window_index`. The index
    tensors go to `device` without a wait."""
    merge = visual.spatial_merge_size
    frames = max(t for t, _, _ in grid_thw)
    height, width = max(h for _, h, _ in grid_thw), max(w for _, _, w in grid_thw)
    rows, weights, canvas = [], [], []
    offset = 0
    frame = torch.arange(frames)
    for image, (t, h, w) in enumerate(grid_thw):
        y, x = torch.arange(h)[:, None], torch.arange(w)[None, :]
        # the processor row of patch (y, x) within a frame, raster order
        position_row = (((y // merge) * (w // merge) + x // merge) * merge + y % merge) * merge + x % merge
        rows.append(offset + frame.clamp(max=t - 1) * h * w + position_row.reshape(-1, 1))
        if frames > 1:
            weights.append((frame < t).float().expand(h * w, frames) / t)
        canvas.append(((image * height + y) * width + x).reshape(-1))
        offset += t * h * w
    rows = torch.cat(rows)
    if hasattr(visual, "get_window_index"):
        window_index, _ = visual.get_window_index(torch.tensor(grid_thw))
        unit = visual.spatial_merge_unit
        rows = torch.argsort(window_index)[rows // unit] * unit + rows % unit  # processor row -> window row
    valid = torch.zeros(len(grid_thw), height, width, dtype=torch.bool)
    for image, (_, h, w) in enumerate(grid_thw):
        valid[image, :h, :w] = True

    def send(tensor):  # pageable host memory: staged before `to` returns, no wait for the device
        return tensor.to(device, non_blocking=True)

    return PatchLayout(send(rows), send(torch.cat(weights)) if weights else None, send(torch.cat(canvas)),
                       send(valid), [(h, w) for _, h, w in grid_thw])


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
        # read to the host before the tower's work is queued: read after it, the host would wait for the whole tower
        # and then leave the device idle while it queues the head
        self.grid_thw = (kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]).cpu()

    def _keeper(self, index: int):
        def keep(module, args, kwargs):
            # a checkpointed next block runs again in backward and stores the same value again then
            self.outputs[index] = args[0] if args else kwargs["hidden_states"]
        return keep

    def layout(self) -> tuple[PatchLayout, list[torch.Tensor]]:
        """The patch layout of the last vision forward and the chosen blocks' outputs, in the order of `blocks`."""
        if self.grid_thw is None or len(self.outputs) != len(self.blocks):
            raise RuntimeError("the vision tower has not run on this batch (no pixel_values?)")
        states = [self.outputs[b] for b in self.blocks]
        return patch_layout(self.visual, self.grid_thw.tolist(), states[0].device), states

    def clear(self) -> None:
        self.outputs.clear()
        self.grid_thw = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
