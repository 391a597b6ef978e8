"""Tiny test models of the Qwen VL families, without downloading anything.

`TINY` holds the families shrunk to a few million parameters for CPU tests; they go through the library's
`build_config` (custom_modules.model_configs, which also holds the published checkpoints' architectures), so a tiny
model differs from the real one only in sizes: token ids, rope layout and model type are the real ones.
"""

from __future__ import annotations

from custom_modules.model_configs import build_config

# Tiny variants: 2 LM layers of width 64 (head_dim 16, so the M-RoPE sections sum to 8), a 2-block ViT.
# The vocabulary keeps its real size because the special tokens sit at their real ids (~10M parameters).
TINY = {
    "qwen2_vl": (dict(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    ), dict(
        depth=2, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2,
    ), True),
    "qwen2_5_vl": (dict(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
    ), dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1],
        tokens_per_second=2, hidden_act="silu",
    ), True),
    "qwen3_vl": (dict(
        vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2],
                         "mrope_interleaved": True},
    ), dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=16,
        spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    ), True),
}

FAMILIES = tuple(TINY)

# Wider, deeper tiny variants, named <family>_wide: 4 LM layers of width 128 (head_dim 32, M-RoPE sections
# summing to 16) and a 4-block ViT of width 64, still a few tens of millions of parameters (mostly the real-size
# vocabulary). qwen3_vl_wide learns the microscopy comparison in 1000 steps where the 2-layer width-64 model
# needs 2500; the others are for experiments (`python -m tools.learning ... --model qwen2_5_vl_wide`).
TINY_VARIANTS = {
    "qwen2_5_vl_wide": ("qwen2_5_vl", dict(
        vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    ), dict(
        depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[1, 3],
        tokens_per_second=2, hidden_act="silu",
    ), True),
    "qwen2_vl_wide": ("qwen2_vl", dict(
        vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    ), dict(
        depth=4, embed_dim=64, hidden_size=128, mlp_ratio=2, num_heads=4, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2,
    ), True),
    "qwen3_vl_wide": ("qwen3_vl", dict(
        vocab_size=151936, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [8, 4, 4],
                         "mrope_interleaved": True},
    ), dict(
        depth=4, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128, patch_size=16,
        spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
        deepstack_visual_indexes=[1],
    ), True),
}


def model_family(name: str) -> str:
    """The family (model_type) of a tiny model name: a family itself or one of TINY_VARIANTS."""
    if name in TINY:
        return name
    if name in TINY_VARIANTS:
        return TINY_VARIANTS[name][0]
    raise ValueError(f"unknown tiny model {name!r}; expected one of {', '.join([*TINY, *TINY_VARIANTS])}")


def tiny_config(name: str):
    """Config of the tiny test model `name`: a family (qwen2_vl, qwen2_5_vl, qwen3_vl) or a TINY_VARIANTS name."""
    family = model_family(name)
    return build_config(family, *(TINY[name] if name in TINY else TINY_VARIANTS[name][1:]))
