"""The architectures of the published Qwen VL checkpoints the recipes name, without downloading anything.

`FULL_SIZE` holds the numbers of each checkpoint's config.json, so `qvr-plan` builds the real model on the meta
device and the GPU benchmarks build it with random weights; `PUBLISHED` maps the hub ids the recipes name to them,
`PUBLISHED_ENCODERS` the custom vision encoders the recipes name.
The tiny test models (tools.model_configs) go through the same `build_config`, so they differ from the real ones only
in sizes: token ids, rope layout and model type are the real ones.
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

# hub id (as recipes name it) -> model id of FULL_SIZE
PUBLISHED = {"Qwen/Qwen2-VL-2B-Instruct": "qwen2_vl_2b", "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2_5_vl_7b",
             "Qwen/Qwen3-VL-2B-Instruct": "qwen3_vl_2b", "Qwen/Qwen3-VL-4B-Instruct": "qwen3_vl_4b",
             "Qwen/Qwen3-VL-8B-Instruct": "qwen3_vl_8b"}


# encoder id (as vision_encoder recipes name it, encoder_path) -> Dinov2Config sizes of the published checkpoint:
# RAD-DINO is a ViT-B/14 at 518 px (1369 patch tokens an image)
PUBLISHED_ENCODERS = {"microsoft/rad-dino": dict(image_size=518, patch_size=14, hidden_size=768, num_hidden_layers=12,
                                                 num_attention_heads=12, mlp_ratio=4)}


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


def published_config(hub_id: str):
    """Config of a checkpoint by the hub id a recipe names (`Qwen/Qwen2.5-VL-7B-Instruct`), or None if unknown."""
    return full_size_config(PUBLISHED[hub_id]) if hub_id in PUBLISHED else None
