"""Qwen-VL vision attention as one batched sdpa call per layer instead of one call per window or image.

transformers runs the Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision tower's attention per segment of `cu_seqlens` unless
a flash-attention implementation is requested: Qwen2.5-VL's windowed layers make one sdpa call per 112-pixel
window (16 windows per 448x448 image, so 256 calls per layer at batch 16), each with its own split, launch and
Python overhead. Equal-length segments need no varlen kernel: they stack into one (segments, heads, length, dim)
batch. This module registers an attention function under a name that contains "flash", so the vision towers
take their cu_seqlens ("varlen") branch, and there groups the segments by length and runs one
`scaled_dot_product_attention` per distinct length (one for square images whose sides are multiples of the
window). The result is the same attention: `tests/unit/test_speedups.py` checks it against the per-segment
loop, forward and backward.

Only the vision sub-config is switched (`use_segment_attention(model)`); the language model keeps its own
implementation (sdpa), and the flash-attention package is not needed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from custom_modules.speedups.parts import VISION_CONFIGS

ATTN_NAME = "flash_free_sdpa_segments"  # "flash" in the name selects transformers' cu_seqlens branch
_plan_cache: list = []  # [(cu_seqlens tensor, plan)] of the last forward: every layer passes the same tensor


def _segment_plan(cu_seqlens: torch.Tensor) -> list[tuple[int, torch.Tensor | None, int]]:
    """[(length, token index (segments, length) or None when the segments tile the sequence evenly, count)]."""
    for tensor, plan in _plan_cache:
        if tensor is cu_seqlens:
            return plan
    bounds = cu_seqlens.tolist()  # one host sync per distinct cu_seqlens tensor, not per layer
    starts, lengths = bounds[:-1], [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    if len(set(lengths)) == 1 and bounds[0] == 0:
        plan = [(lengths[0], None, len(lengths))]
    else:
        by_length: dict[int, list[int]] = {}
        for start, length in zip(starts, lengths):
            if length:
                by_length.setdefault(length, []).append(start)
        plan = []
        for length, group in by_length.items():
            first = torch.tensor(group, device=cu_seqlens.device, dtype=torch.long)
            index = first[:, None] + torch.arange(length, device=cu_seqlens.device)
            plan.append((length, index, len(group)))
    _plan_cache[:] = [(tensor, p) for tensor, p in _plan_cache[-1:]] + [(cu_seqlens, plan)]
    return plan


@torch.compiler.disable  # the plan is host data of each batch's grid: traced, every new mix of sizes recompiles
def segment_sdpa_forward(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                         cu_seq_lens_q=None, cu_seq_lens_k=None, is_causal=False, **kwargs):
    """transformers attention-interface function: query/key/value (1, heads, tokens, dim) split into the
    segments of `cu_seq_lens_q` (block-diagonal attention); returns ((1, tokens, heads, dim), None)."""
    if cu_seq_lens_q is None or query.shape[0] != 1 or attention_mask is not None:
        raise ValueError(f"{ATTN_NAME} serves only the Qwen-VL vision towers' cu_seqlens attention")
    if cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q and not torch.equal(cu_seq_lens_k,
                                                                                              cu_seq_lens_q):
        raise ValueError(f"{ATTN_NAME}: query and key segments differ")
    _, heads, tokens, dim = query.shape
    q, k, v = query[0], key[0], value[0]  # (heads, tokens, dim)
    plan = _segment_plan(cu_seq_lens_q)

    def attend(qs, ks, vs):  # (segments, heads, length, dim) -> (segments, length, heads, dim)
        out = F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, is_causal=is_causal, scale=scaling)
        return out.transpose(1, 2)

    if len(plan) == 1 and plan[0][1] is None:
        length, _, count = plan[0]
        split = [t.view(heads, count, length, dim).transpose(0, 1) for t in (q, k, v)]
        return attend(*split).reshape(1, tokens, heads, dim), None
    out = query.new_zeros(tokens, heads, dim)
    for length, index, count in plan:
        flat = index.reshape(-1)
        split = [t.index_select(1, flat).view(heads, count, length, dim).transpose(0, 1) for t in (q, k, v)]
        out = out.index_copy(0, flat, attend(*split).reshape(count * length, heads, dim))
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
