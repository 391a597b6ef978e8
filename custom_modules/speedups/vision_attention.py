"""Qwen-VL vision attention as one attention call per layer instead of one call per window or image.

transformers runs the Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision tower's attention per segment of `cu_seqlens` unless
a flash-attention implementation is requested: Qwen2.5-VL's windowed layers make one sdpa call per 112-pixel
window (16 windows per 448x448 image, so 256 calls per layer at batch 16), each with its own split, launch and
Python overhead. This module registers an attention function under a name that contains "flash", so the vision
towers take their cu_seqlens ("varlen") branch, and there
- on CUDA in half precision, runs every segment in one call of PyTorch's own flash kernel in its varlen form
  (the kernel sdpa uses; no flash-attention package), whatever the mix of lengths;
- elsewhere (CPU, float32, dropout), groups the segments by length and runs one `scaled_dot_product_attention`
  per distinct length: equal-length segments stack into one (segments, heads, length, dim) batch. On images of
  users' mixed sizes the edge windows and the images differ in length, so this is several calls a layer, each
  with gathers and Python work of its own, which left the GPU idle through much of the vision forward.
Both give the same attention: `tests/unit/test_speedups.py` checks the model against the per-segment loop, forward
and backward, and on a GPU the flash path against the grouped one.

Only the vision sub-config is switched (`use_segment_attention(model)`); the language model keeps its own
implementation (sdpa).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from custom_modules.speedups.parts import VISION_CONFIGS

ATTN_NAME = "flash_free_sdpa_segments"  # "flash" in the name selects transformers' cu_seqlens branch
_cache: list = []  # [(cu_seqlens tensor, Segments)] of the last forward: every layer passes the same tensor


class Segments:
    """The segments of one cu_seqlens tensor, read to the host once: their bounds, and (built on first use) the
    grouped plan of the sdpa path."""

    def __init__(self, cu_seqlens: torch.Tensor):
        self.cu_seqlens = cu_seqlens
        self.bounds = cu_seqlens.tolist()  # one host sync per distinct cu_seqlens tensor, not per layer
        self.max_length = max((b - a for a, b in zip(self.bounds[:-1], self.bounds[1:])), default=0)
        self._plan = None

    @property
    def plan(self) -> list[tuple[int, torch.Tensor | None, int]]:
        """[(length, token index (segments, length) or None when the segments tile the sequence evenly, count)]."""
        if self._plan is None:
            self._plan = _group_by_length(self.bounds, self.cu_seqlens.device)
        return self._plan


def _group_by_length(bounds: list[int], device) -> list[tuple[int, torch.Tensor | None, int]]:
    starts, lengths = bounds[:-1], [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    if len(set(lengths)) == 1 and bounds[0] == 0:
        return [(lengths[0], None, len(lengths))]
    by_length: dict[int, list[int]] = {}
    for start, length in zip(starts, lengths):
        if length:
            by_length.setdefault(length, []).append(start)
    plan = []
    for length, group in by_length.items():
        first = torch.tensor(group, device=device, dtype=torch.long)
        plan.append((length, first[:, None] + torch.arange(length, device=device), len(group)))
    return plan


def segments_of(cu_seqlens: torch.Tensor) -> Segments:
    for tensor, segments in _cache:
        if tensor is cu_seqlens:
            return segments
    segments = Segments(cu_seqlens)
    _cache[:] = _cache[-1:] + [(cu_seqlens, segments)]
    return segments


def flash_varlen_usable(query: torch.Tensor, dropout: float) -> bool:
    """Whether PyTorch's own flash kernel takes this attention in its varlen form (CUDA, half precision, head
    size a multiple of 8 up to 256, no dropout, flash not switched off by the user)."""
    dim = query.shape[-1]
    return (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and not dropout and dim % 8 == 0
            and dim <= 256 and torch.backends.cuda.flash_sdp_enabled())


def varlen_flash_attention(q, k, v, segments: Segments, scale, is_causal):
    """(tokens, heads, dim) each -> (tokens, heads, dim): every segment of `segments` in one flash call, whatever
    their lengths. aten's op is called, not torch.nn.attention.varlen, which on Hopper hands segments longer than
    128 to cuDNN, whose host-side plan for each new shape is what `skip_cudnn_attention` avoids."""
    cu = segments.cu_seqlens.to(torch.int32)
    length = segments.max_length
    return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, length, length, 0.0, is_causal, False,
                                                   scale=scale)[0]


def grouped_sdpa_attention(q, k, v, segments: Segments, scale, is_causal, dropout=0.0):
    """(tokens, heads, dim) each -> (tokens, heads, dim): one sdpa call per distinct segment length."""
    tokens, heads, dim = q.shape

    def attend(qs, ks, vs):  # (segments, heads, length, dim) -> (segments, length, heads, dim)
        out = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, is_causal=is_causal, scale=scale)
        return out.transpose(1, 2)

    plan = segments.plan
    if len(plan) == 1 and plan[0][1] is None:
        length, _, count = plan[0]
        split = [t.view(count, length, heads, dim).transpose(1, 2) for t in (q, k, v)]
        return attend(*split).reshape(tokens, heads, dim)
    out = q.new_zeros(tokens, heads, dim)
    for length, index, count in plan:
        flat = index.reshape(-1)
        split = [t.index_select(0, flat).view(count, length, heads, dim).transpose(1, 2) for t in (q, k, v)]
        out = out.index_copy(0, flat, attend(*split).reshape(count * length, heads, dim))
    return out


@torch.compiler.disable  # the segments are host data of each batch's grid: traced, every new mix of sizes recompiles
def segment_sdpa_forward(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                         cu_seq_lens_q=None, cu_seq_lens_k=None, is_causal=False, **kwargs):
    """transformers attention-interface function: query/key/value (1, heads, tokens, dim) split into the
    segments of `cu_seq_lens_q` (block-diagonal attention); returns ((1, tokens, heads, dim), None)."""
    if cu_seq_lens_q is None or query.shape[0] != 1 or attention_mask is not None:
        raise ValueError(f"{ATTN_NAME} serves only the Qwen-VL vision towers' cu_seqlens attention")
    if cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q and not torch.equal(cu_seq_lens_k,
                                                                                              cu_seq_lens_q):
        raise ValueError(f"{ATTN_NAME}: query and key segments differ")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    segments = segments_of(cu_seq_lens_q)
    if flash_varlen_usable(query, dropout):
        out = varlen_flash_attention(q, k, v, segments, scaling, is_causal)
    else:
        out = grouped_sdpa_attention(q, k, v, segments, scaling, is_causal, dropout)
    return out.unsqueeze(0), None


def register() -> str:
    """Make ATTN_NAME known to transformers (idempotent); returns it."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, segment_sdpa_forward)
    return ATTN_NAME


def use_segment_attention(model) -> int:
    """Switch every Qwen-VL vision config reachable from `model` (peft-wrapped or not) to the batched segment
    attention; returns how many configs were switched (0: no Qwen-VL vision tower found)."""
    register()
    switched = 0
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "model_type", None) in VISION_CONFIGS and config._attn_implementation != ATTN_NAME:
            config._attn_implementation = ATTN_NAME  # the tower's attention layers share this config object
            switched += 1
    return switched
