"""Detection head on ViT block outputs, and the fusion projector that turns its features into LM tokens."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from custom_modules.forgery.vit import PatchLayout


@dataclass
class HeadOutput:
    image_logits: torch.Tensor        # (B,) real/fake logit, positive = fake
    heatmaps: list[torch.Tensor]      # B x (H, W) patch-level logits on each image's own patch grid
    features: torch.Tensor            # (B, 2 * head_dim) pooled features (fusion input)


class DetectionHead(nn.Module):
    """Per block: norm + projection; blocks fused by convs; a 1x1 conv gives the heatmap, pooling the logit. The
    fusing 1x1 conv, GELU, 3x3 conv and GELU are `fuse[0..3]`."""

    def __init__(self, vit_dim: int, num_blocks: int, head_dim: int = 256):
        super().__init__()
        self.project = nn.ModuleList(nn.Sequential(nn.LayerNorm(vit_dim), nn.Linear(vit_dim, head_dim))
                                     for _ in range(num_blocks))
        self.fuse = nn.Sequential(nn.Conv2d(num_blocks * head_dim, head_dim, 1), nn.GELU(),
                                  nn.Conv2d(head_dim, head_dim, 3, padding=1), nn.GELU())
        self.heatmap = nn.Conv2d(head_dim, 1, 1)
        self.classify = nn.Sequential(nn.Linear(2 * head_dim + 1, head_dim), nn.GELU(), nn.Linear(head_dim, 1))

    def forward(self, layout: PatchLayout, block_states: list[torch.Tensor]) -> HeadOutput:
        """block_states[k]: block k's output rows (total patches, D), placed by `layout`. The batch's images are
        read on one canvas padded to the largest (images may differ in H, W): what lies outside an image is zero
        where the 3x3 convolution reads it, as its own zero padding would be, and no output reads it."""
        dtype = self.heatmap.weight.dtype
        projected = []
        for project, states in zip(self.project, block_states):
            rows = states[layout.rows].to(dtype)  # (P, T, D): each position's frames
            rows = rows[:, 0] if layout.frame_weight is None else (rows * layout.frame_weight[..., None]).sum(1)
            projected.append(project(rows))
        projected = torch.cat(projected, 1)
        batch, height, width = layout.valid.shape
        canvas = projected.new_zeros(batch * height * width, projected.shape[1])
        canvas = canvas.index_copy(0, layout.canvas_index, projected)
        canvas = canvas.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        inside = layout.valid[:, None].to(dtype)
        hidden = self.fuse[1](self.fuse[0](canvas)) * inside
        fused = self.fuse[3](self.fuse[2](hidden))
        heat = self.heatmap(fused)[:, 0]
        outside = ~layout.valid
        mean = (fused * inside).sum((2, 3)) / inside.sum((2, 3))
        pooled = torch.cat([mean, fused.masked_fill(outside[:, None], float("-inf")).amax((2, 3))], 1)
        peak = heat.masked_fill(outside, float("-inf")).amax((1, 2))
        logits = self.classify(torch.cat([pooled, peak[:, None]], 1))[:, 0]
        return HeadOutput(logits, [heat[i, :h, :w] for i, (h, w) in enumerate(layout.sizes)], pooled)


class FusionProjector(nn.Module):
    """Pooled head features -> `tokens` embeddings of the LM width, with dropout on the hidden layer."""

    def __init__(self, feature_dim: int, lm_dim: int, tokens: int, hidden_dropout: float):
        super().__init__()
        self.tokens, self.lm_dim = tokens, lm_dim
        hidden = max(feature_dim, lm_dim)
        self.net = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(), nn.Dropout(hidden_dropout),
                                 nn.Linear(hidden, tokens * lm_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).reshape(features.shape[0], self.tokens, self.lm_dim)
