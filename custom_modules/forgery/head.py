"""Detection head on ViT block outputs, and the fusion projector that turns its features into LM tokens."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class HeadOutput:
    image_logits: torch.Tensor        # (B,) real/fake logit, positive = fake
    heatmaps: list[torch.Tensor]      # B x (H, W) patch-level logits on each image's own patch grid
    features: torch.Tensor            # (B, 2 * head_dim) pooled features (fusion input)


class DetectionHead(nn.Module):
    """Per block: norm + projection; blocks fused by convs; a 1x1 conv gives the heatmap, pooling the logit."""

    def __init__(self, vit_dim: int, num_blocks: int, head_dim: int = 256):
        super().__init__()
        self.project = nn.ModuleList(nn.Sequential(nn.LayerNorm(vit_dim), nn.Linear(vit_dim, head_dim))
                                     for _ in range(num_blocks))
        self.fuse = nn.Sequential(nn.Conv2d(num_blocks * head_dim, head_dim, 1), nn.GELU(),
                                  nn.Conv2d(head_dim, head_dim, 3, padding=1), nn.GELU())
        self.heatmap = nn.Conv2d(head_dim, 1, 1)
        self.classify = nn.Sequential(nn.Linear(2 * head_dim + 1, head_dim), nn.GELU(), nn.Linear(head_dim, 1))

    def forward(self, block_grids: list[list[torch.Tensor]]) -> HeadOutput:
        """block_grids[k][i]: block k's (D, H, W) map of image i (images may differ in H, W)."""
        dtype = self.heatmap.weight.dtype
        logits, heatmaps, features = [], [], []
        for per_block in zip(*block_grids):
            projected = [proj(g.to(dtype).permute(1, 2, 0)).permute(2, 0, 1) for proj, g in zip(self.project, per_block)]
            fused = self.fuse(torch.cat(projected).unsqueeze(0))[0]
            heat = self.heatmap(fused.unsqueeze(0))[0, 0]
            pooled = torch.cat([fused.mean((1, 2)), fused.amax((1, 2))])
            logits.append(self.classify(torch.cat([pooled, heat.amax().reshape(1)]))[0])
            heatmaps.append(heat)
            features.append(pooled)
        return HeadOutput(torch.stack(logits), heatmaps, torch.stack(features))


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
