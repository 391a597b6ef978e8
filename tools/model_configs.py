"""Model configurations of the Qwen VL checkpoints the recipes target, without downloading anything.

`FULL_SIZE` holds the architecture numbers of the published checkpoints (their config.json), so the GPU
benchmarks build full-size models with random weights. `TINY` holds the same families shrunk to a few
million parameters for CPU tests. Both go through `build_config`, so a tiny model differs from the real
one only in sizes: token ids, rope layout and model type are the real ones.
"""

from __future__ import annotations

from transformers import AutoConfig

# Ids of the real Qwen tokenizer (151643 <|endoftext|> ... 151656 <|video_pad|>): ms-swift's Qwen-VL
# templates hard-code the image token id, so tiny models must use these exact ids too.
SPECIAL_TOKEN_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
MEDIA_TOKEN_IDS = {
    "image_token_id": SPECIAL_TOKEN_IDS["<|image_pad|>"],
    "video_token_id": SPECIAL_TOKEN_IDS["<|video_pad|>"],
    "vision_start_token_id": SPECIAL_TOKEN_IDS["<|vision_start|>"],
    "vision_end_token_id": SPECIAL_TOKEN_IDS["<|vision_end|>"],
}

# model id (as recipe file names and benchmarks name them) -> model family (model_type; what converters, eval and
# the tiny models call a family). The one map of its kind.
FAMILY_OF_MODEL = {"qwen2_vl_2b": "qwen2_vl", "qwen2_5_vl_7b": "qwen2_5_vl", "qwen3_vl_2b": "qwen3_vl",
                  "qwen3_vl_4b": "qwen3_vl", "qwen3_vl_8b": "qwen3_vl"}

# model id -> (text config, vision config, tie_word_embeddings)
FULL_SIZE = {
    "qwen2_vl_2b": (dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
        num_attention_heads=12, num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    ), dict(
        depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2,
    ), True),
    "qwen2_5_vl_7b": (dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=128000,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
    ), dict(
        depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
    ), False),
    "qwen3_vl_2b": (dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                         "mrope_interleaved": True},
    ), dict(
        depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
        patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
        deepstack_visual_indexes=[5, 11, 17],
    ), True),
    "qwen3_vl_4b": (dict(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                         "mrope_interleaved": True},
    ), dict(
        depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
        patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
        deepstack_visual_indexes=[5, 11, 17],
    ), True),
    "qwen3_vl_8b": (dict(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                         "mrope_interleaved": True},
    ), dict(
        depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
        patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
        deepstack_visual_indexes=[8, 16, 24],
    ), False),
}

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


def build_config(family: str, text: dict, vision: dict, tie_word_embeddings: bool):
    """A transformers config of `family` (model_type qwen2_vl / qwen2_5_vl / qwen3_vl) with real token ids."""
    text = dict(text, bos_token_id=SPECIAL_TOKEN_IDS["<|endoftext|>"], eos_token_id=SPECIAL_TOKEN_IDS["<|im_end|>"],
                pad_token_id=SPECIAL_TOKEN_IDS["<|endoftext|>"], tie_word_embeddings=tie_word_embeddings)
    return AutoConfig.for_model(family, text_config=text, vision_config=vision,
                                tie_word_embeddings=tie_word_embeddings, **MEDIA_TOKEN_IDS)


def full_size_config(model_id: str):
    """Config of a published checkpoint, e.g. `full_size_config("qwen2_5_vl_7b")`, for random-weight runs."""
    if model_id not in FULL_SIZE:
        raise ValueError(f"unknown model id {model_id!r}; expected one of {', '.join(FULL_SIZE)}")
    return build_config(FAMILY_OF_MODEL[model_id], *FULL_SIZE[model_id])


def tiny_config(name: str):
    """Config of the tiny test model `name`: a family (qwen2_vl, qwen2_5_vl, qwen3_vl) or a TINY_VARIANTS name."""
    family = model_family(name)
    return build_config(family, *(TINY[name] if name in TINY else TINY_VARIANTS[name][1:]))
