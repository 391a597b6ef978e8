"""SimpleVisionMerger: encoder tokens (D_vis) -> LM embeddings (D_lm), one token in, one token out."""

from __future__ import annotations

import torch
from torch import nn


class SimpleVisionMerger(nn.Module):
    """Per-token LayerNorm then an MLP (or one Linear) to the LM width; no 2x2 patch merge."""

    def __init__(self, vision_size: int, lm_size: int, kind: str = "mlp", hidden_size: int | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(vision_size, eps=1e-6)
        if kind == "mlp":
            hidden_size = hidden_size or lm_size
            self.proj = nn.Sequential(nn.Linear(vision_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, lm_size))
        elif kind == "linear":
            self.proj = nn.Linear(vision_size, lm_size)
        else:
            raise ValueError(f"unknown merger kind {kind!r}; expected mlp or linear")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(tokens))
